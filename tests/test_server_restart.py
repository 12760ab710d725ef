"""Nothing lost: a `seqsched server` process (the fake vLLM on the tiny model, slowed down) is killed with SIGKILL in
the middle of a batch job; restarted on the same --data_dir it completes the job, computing exactly the lines that
had not finished (counted), and the output equals the greedy answers in input order.

Run as `python -m tests.test_server_restart --data_dir D --port P` it is that server process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.tiny_model import synthetic_prompts

REPO = Path(__file__).resolve().parent.parent
LINES = 16
MAX_TOKENS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The server process; its output goes to DATA_DIR.port.log (a pipe nobody reads could fill and block it)."""
    command = [sys.executable, "-m", "tests.test_server_restart", "--data_dir", str(data_dir), "--port", str(port)]
    with (data_dir.parent / f"server.{port}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(process: subprocess.Popen[bytes], url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def finished_lines(data_dir: Path, batch_id: str) -> int:
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ?", [batch_id]).fetchone()[0]


def computed_lines(url: str) -> int:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("seqsched_batch_lines_computed_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no batch_lines_computed_total in /metrics")


def test_killed_server_resumes_its_job_without_recomputing_finished_lines(tmp_path: Path, tiny_engine) -> None:
    from tests.test_server_app import batch_lines, greedy_text, jsonl

    data_dir = tmp_path / "data"
    prompts = synthetic_prompts(LINES, seed=13)
    expected = [greedy_text(tiny_engine, prompt, MAX_TOKENS) for prompt in prompts]
    url = f"http://127.0.0.1:{free_port()}"
    first = start(data_dir, int(url.rsplit(":", 1)[1]))
    second = None
    try:
        wait_healthy(first, url)
        files = {"file": ("in.jsonl", jsonl(batch_lines(prompts, max_tokens=MAX_TOKENS)))}
        file = httpx.post(f"{url}/v1/files", files=files, data={"purpose": "batch"}).json()
        request = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch_id = httpx.post(f"{url}/v1/batches", json=request).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/batches/{batch_id}").json()["request_counts"]["completed"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.03)
        first.kill()  # SIGKILL: no cleanup runs
        first.wait(timeout=30)
        kept = finished_lines(data_dir, batch_id)
        assert 4 <= kept < LINES, kept

        url = f"http://127.0.0.1:{free_port()}"
        second = start(data_dir, int(url.rsplit(":", 1)[1]))
        wait_healthy(second, url)
        deadline = time.monotonic() + 60
        while (batch := httpx.get(f"{url}/v1/batches/{batch_id}").json())["status"] != "completed":
            assert time.monotonic() < deadline and batch["status"] in ("in_progress", "finalizing"), batch
            time.sleep(0.05)
        assert computed_lines(url) == LINES - kept  # no finished line computed twice
        assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        output = httpx.get(f"{url}/v1/files/{batch['output_file_id']}/content").text.splitlines()
        results = [json.loads(line) for line in output]
        assert [line["custom_id"] for line in results] == [f"req-{index}" for index in range(LINES)]
        assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in results] == expected
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()


def main(argv: Sequence[str] | None = None) -> int:
    """The server process of the test: the fake vLLM over the tiny model, one step every 30 ms, 2 at once."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from seqsched.engines.hf import HFEngine
    from seqsched_cli.main import _stop_on_sigterm
    from serving.server.command import server
    from tests.test_server_app import fake_engine, server_config
    from tests.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    model_dir = build_tiny_model()
    engine = fake_engine(HFEngine.from_spec(str(model_dir)), max_num_seqs=2, delay_s=0.03)
    config = server_config(Path(args.data_dir).parent, model_dir, data_dir=args.data_dir, port=args.port)
    with _stop_on_sigterm():
        return server(config, engine=engine)


if __name__ == "__main__":
    sys.exit(main())
