"""Against a real `mlflow server` (sqlite backend, proxied artifacts): train, register, load, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lengthpred.registry import load_predictor
from seqsched_cli.main import main
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A tracking server on a random free port of 127.0.0.1; yields its URL; stopped afterwards."""
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow_cli), "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"),
        "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.returncode is not None


@pytest.mark.integration
def test_train_register_load_against_a_server(
    mlflow_server: str,
    length_dataset: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(REPO / "recipes/sklearn/train.yaml"), "--data", str(length_dataset),
                       "--tracking-uri", mlflow_server, "--register-as", "lenpred-server", "--alias", "champion",
                       "--output_dir", str(tmp_path / "out"), "--progress", "false"]) == 0  # fmt: skip
    # Run from tmp_path, a local store would show up there: everything went to the server instead.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "artifacts").rglob("predictor.json")), "artifacts are stored by the server"

    prompts = ["repeat apple 2 times", "please say dog 22 times and be quick"]
    direct = load_predictor("models:/lenpred-server@champion", tracking_uri=mlflow_server).predict(prompts)
    assert direct[0] < direct[1]

    code = (
        "import json, sys, mlflow.pyfunc, pandas\n"
        "model = mlflow.pyfunc.load_model('models:/lenpred-server/1')\n"
        "print(json.dumps([int(v) for v in model.predict(pandas.DataFrame({'prompt': json.loads(sys.argv[1])}))]))\n"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(prompts)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == direct
