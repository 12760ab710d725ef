"""`seqsched server`'s app in-process (FastAPI TestClient) over the fake vLLM on the tiny model: models, chat and
text completions (whole and streamed), the Files and Batch APIs through a job's whole life, cancel and expiry, the
API key, limits, and every bad input answered OpenAI's way."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.engines.hf import HFEngine
from seqsched.engines.vllm import VLLMEngine
from seqsched.model_specs import ModelConfig
from serving.server.app import create_app
from serving.server.config import ServerConfig
from serving.server.service import ServerService
from tests.fake_vllm import LLM, fake_vllm_module
from tests.tiny_model import synthetic_prompts

MODEL = "tiny"
LIMIT = 16


def fake_engine(tiny_engine: HFEngine, max_num_seqs: int = 2, max_model_len: int = 64, delay_s: float = 0.0):
    """The fake vLLM over the tiny model; delay_s slows every step (so a test can act while a job runs)."""
    engine = VLLMEngine(
        LLM(tiny_engine, max_num_seqs=max_num_seqs, max_model_len=max_model_len),
        tiny_engine.tokenizer,
        fake_vllm_module(),
    )
    if delay_s:
        step = engine.step

        def slow_step():  # type: ignore[no-untyped-def]
            time.sleep(delay_s)
            return step()

        engine.step = slow_step  # type: ignore[method-assign]
    return engine


def server_config(tmp_path: Path, tiny_model_dir: Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "model": ModelConfig(spec=str(tiny_model_dir)),
        "engine": EngineConfig(kind=EngineKind.VLLM),
        "served_model_name": MODEL,
        "limit": LIMIT,
    }
    values.update(overrides)
    return ServerConfig(**values)


def batch_lines(prompts: list[str], max_tokens: int | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return [
        {
            "custom_id": f"req-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **body},
        }
        for index, prompt in enumerate(prompts)
    ]


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def greedy_text(tiny_engine: HFEngine, prompt: str, cap: int = LIMIT) -> str:
    """The tiny model's greedy answer (what serve and the server must both give)."""
    return tiny_engine.generate([tiny_engine.encode(prompt)], cap).rows[0].text


def wait_for_batch(client: Any, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {batch['status']} after {timeout_s} s")


def assert_openai_error(response: Any, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture()
def client(tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine) -> Iterator[TestClient]:
    service = ServerService(server_config(tmp_path, tiny_model_dir), fake_engine(tiny_engine))
    with TestClient(create_app(service)) as test_client:
        yield test_client


def upload(client: Any, data: bytes, name: str = "in.jsonl") -> dict:
    response = client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_models_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["seqsched"]["policy"] == "fcfs" and models["data"][0]["seqsched"]["predictor"] == "none"
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_openai_error(client.get("/v1/models/other"), 404, "model_not_found")
    text = client.get("/metrics").text
    for name in ("queue_depth", "running_rows", "tokens_per_second", "preemptions_total", "predictor_latency"):
        assert f"seqsched_{name}" in text


def test_chat_completion_whole_and_streamed_equal_the_greedy_answer(client: TestClient, tiny_engine: HFEngine) -> None:
    prompt = synthetic_prompts(1, seed=3)[0]
    expected = greedy_text(tiny_engine, prompt, 12)
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == expected
    assert whole["usage"]["completion_tokens"] >= 1 and whole["choices"][0]["finish_reason"] in ("stop", "length")
    events = []
    with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert streamed == expected
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_text_completion_whole_and_streamed(client: TestClient) -> None:
    body = {"model": MODEL, "prompt": "repeat apple 3 times", "max_tokens": 8}
    whole = client.post("/v1/completions", json=body).json()
    assert whole["object"] == "text_completion" and whole["usage"]["prompt_tokens"] > 0
    response = client.post("/v1/completions", json={**body, "stream": True})
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    ids = client.post("/v1/completions", json={**body, "prompt": [5, 6, 7]})
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None, None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, None, "model"),
        (
            "/v1/chat/completions",
            {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "model_not_found",
            "model",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, None, "messages"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
            400,
            None,
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            400,
            None,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2},
            400,
            "unsupported_parameter",
            "n",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "word " * 200}]},
            400,
            "context_length_exceeded",
            "messages",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": {"a": 1}}, 400, None, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 200}, 400, "context_length_exceeded", "prompt"),
        ("/v1/nothing", {}, 404, "unknown_url", None),
    ],
)
def test_bad_requests_get_openai_errors(
    client: TestClient, path: str, body: Any, status: int, code: str | None, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, status, code, param)


def test_unknown_and_hostile_ids_are_404_and_never_reach_the_filesystem(client: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    for file_id in ("file-0123", "../secret.txt", "..%2F..%2Fsecret.txt", f"file-{'0' * 32}", str(secret)):
        assert_openai_error(client.get(f"/v1/files/{file_id}/content"), 404)
        assert_openai_error(client.delete(f"/v1/files/{file_id}"), 404)
    assert_openai_error(client.get(f"/v1/batches/batch_{'0' * 32}"), 404)
    assert_openai_error(client.post("/v1/batches/nope/cancel"), 404)
    missing = {"input_file_id": f"file-{'1' * 32}", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert_openai_error(client.post("/v1/batches", json=missing), 404, None, "input_file_id")
    uploaded = upload(client, jsonl(batch_lines(["hi"])), name="../../etc/passwd")
    assert uploaded["filename"] == "passwd" and uploaded["id"].startswith("file-")
    assert not (tmp_path / "etc").exists()


def test_batch_lifecycle_outputs_equal_serve_s(
    client: TestClient, tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine
) -> None:
    """A batch with a bad line and an over-long prompt: error file for those two, the rest served in input order
    with the same choices and usage as `seqsched serve` on the same file."""
    from serving.policy.scheduler import Strategy
    from serving.serve_command import ServeConfig, serve

    lines: list[Any] = batch_lines(synthetic_prompts(6, seed=11), max_tokens=12)
    lines.insert(2, '{"custom_id": "broken", "body": {"messages": "nope"}}')
    lines.insert(4, batch_lines(["word " * 200])[0] | {"custom_id": "too-long"})
    data = jsonl(lines)
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    config = ServeConfig(
        input=str(source),
        output=str(tmp_path / "serve.jsonl"),
        model=ModelConfig(spec=str(tiny_model_dir)),
        engine=EngineConfig(kind=EngineKind.VLLM),
        strategy=Strategy.VANILLA,
        limit=LIMIT,
        progress=False,
    )
    reference = [json.loads(line) for line in serve(config, fake_engine(tiny_engine)).output.read_text().splitlines()]

    file = upload(client, data)
    assert file["purpose"] == "batch" and file["bytes"] == len(data) and file["object"] == "file"
    assert client.get(f"/v1/files/{file['id']}").json() == file
    assert client.get(f"/v1/files/{file['id']}/content").content == data
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": file["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"name": "t"},
        },
    ).json()
    assert created["object"] == "batch" and created["status"] in ("validating", "in_progress")
    assert created["id"].startswith("batch_") and created["metadata"] == {"name": "t"}
    done = wait_for_batch(client, created["id"], ("completed", "failed"))
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 8, "completed": 6, "failed": 2}
    assert all(done[key] for key in ("in_progress_at", "finalizing_at", "completed_at", "output_file_id"))
    output = [json.loads(line) for line in client.get(f"/v1/files/{done['output_file_id']}/content").text.splitlines()]
    errors = [json.loads(line) for line in client.get(f"/v1/files/{done['error_file_id']}/content").text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"req-{index}" for index in range(6)]
    assert [line["custom_id"] for line in errors] == ["broken", "too-long"]
    assert errors[1]["error"]["code"] == "context_length_exceeded" and errors[0]["response"]["status_code"] == 400
    assert str(tmp_path) not in json.dumps(errors)  # messages name the file by its id, not its place on the server
    served = [line for line in reference if line["error"] is None]
    for ours, theirs in zip(output, served, strict=True):
        assert ours["custom_id"] == theirs["custom_id"]
        assert ours["response"]["body"]["choices"] == theirs["response"]["body"]["choices"]
        assert ours["response"]["body"]["usage"] == theirs["response"]["body"]["usage"]
    listed = client.get("/v1/batches").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == created["id"] and listed["has_more"] is False
    files = client.get("/v1/files").json()["data"]
    assert {item["purpose"] for item in files} == {"batch", "batch_output"}
    assert client.delete(f"/v1/files/{file['id']}").json() == {"id": file["id"], "object": "file", "deleted": True}
    assert_openai_error(client.get(f"/v1/files/{file['id']}"), 404)


def test_cancel_keeps_finished_lines_and_one_job_s_failure_stops_no_other(
    tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine
) -> None:
    service = ServerService(server_config(tmp_path, tiny_model_dir), fake_engine(tiny_engine, 1, delay_s=0.01))
    with TestClient(create_app(service)) as client:
        empty = upload(client, b"\n")
        good = upload(client, jsonl(batch_lines(synthetic_prompts(12, seed=5), max_tokens=10)))
        request = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        failing = client.post("/v1/batches", json={**request, "input_file_id": empty["id"]}).json()
        running = client.post("/v1/batches", json={**request, "input_file_id": good["id"]}).json()
        failed = wait_for_batch(client, failing["id"], ("failed",))
        assert failed["errors"]["data"][0]["code"] == "empty_file" and failed["failed_at"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/batches/{running['id']}").json()["request_counts"]["completed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert_openai_error(client.delete(f"/v1/files/{good['id']}"), 409)  # the input of a running batch
        cancelling = client.post(f"/v1/batches/{running['id']}/cancel").json()
        assert cancelling["status"] in ("cancelling", "cancelled") and cancelling["cancelling_at"]
        cancelled = wait_for_batch(client, running["id"], ("cancelled",))
        kept = cancelled["request_counts"]["completed"]
        assert 2 <= kept < 12 and cancelled["cancelled_at"]
        output = client.get(f"/v1/files/{cancelled['output_file_id']}/content").text.splitlines()
        not_run = client.get(f"/v1/files/{cancelled['error_file_id']}/content").text.splitlines()
        assert len(output) == kept and len(output) + len(not_run) == 12
        assert {json.loads(line)["error"]["code"] for line in not_run} == {"batch_cancelled"}
        assert_openai_error(client.post(f"/v1/batches/{failing['id']}/cancel"), 400)
        # The server goes on: a chat request still works.
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "say cat 2 times"}], "max_tokens": 4}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200


def test_expired_batch_keeps_what_finished(tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine) -> None:
    service = ServerService(server_config(tmp_path, tiny_model_dir), fake_engine(tiny_engine, 1, delay_s=0.05))
    with TestClient(create_app(service)) as client:
        file = upload(client, jsonl(batch_lines(synthetic_prompts(40, seed=2), max_tokens=12)))
        batch = client.post(
            "/v1/batches",
            json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "2s"},
        ).json()
        expired = wait_for_batch(client, batch["id"], ("expired",), timeout_s=20)
        assert expired["expired_at"] and expired["request_counts"]["completed"] < 40
        not_run = client.get(f"/v1/files/{expired['error_file_id']}/content").text.splitlines()
        assert json.loads(not_run[-1])["error"]["code"] == "batch_expired"
        bad_window = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "48h"}
        assert_openai_error(client.post("/v1/batches", json=bad_window), 400, param="completion_window")
        bad_endpoint = {**bad_window, "completion_window": "24h", "endpoint": "/v1/embeddings"}
        assert_openai_error(client.post("/v1/batches", json=bad_endpoint), 400, param="endpoint")


def test_api_key_upload_limits(tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine) -> None:
    config = server_config(tmp_path, tiny_model_dir, api_key="s3cret", max_upload_bytes=2048, max_file_lines=3)
    with TestClient(create_app(ServerService(config, fake_engine(tiny_engine)))) as client:
        assert client.get("/health").status_code == 200  # open without a key
        assert_openai_error(client.get("/v1/models"), 401)
        assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
        assert_openai_error(client.get("/metrics", headers={"Authorization": "Basic s3cret"}), 401)
        auth = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=auth).status_code == 200
        big = jsonl(batch_lines(["x" * 3000]))
        response = client.post("/v1/files", files={"file": ("in.jsonl", big)}, data={"purpose": "batch"}, headers=auth)
        assert_openai_error(response, 413, "file_too_large")
        long = jsonl(batch_lines(["a", "b", "c", "d"]))
        response = client.post("/v1/files", files={"file": ("in.jsonl", long)}, data={"purpose": "batch"}, headers=auth)
        assert_openai_error(response, 400, "too_many_lines", "file")
        response = client.post("/v1/files", files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "x"}, headers=auth)
        assert_openai_error(response, 400, param="purpose")
        assert list((tmp_path / "data" / "files").iterdir()) == []


def test_server_command_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from seqsched_cli.main import main

    assert main(["server", "--policy", "sjf"]) == 2
    assert "--predictor" in capsys.readouterr().err
    assert main(["server", "--policy", "sjf-fcr", "--predictor", "oracle:x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--policy" in err
    assert main(["server", "--predictor", "perception"]) == 2
    assert "perception" in capsys.readouterr().err


def test_sjf_server_predicts_every_request_and_batch_line(
    tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine
) -> None:
    """With --policy sjf and an oracle predictor: /v1/models names both; chat requests that find the engine idle
    are released at once without a prediction (counted as skipped); batch lines are predicted by their custom_id
    (one the oracle lacks is still served, ranked longest, the failure counted); the predictor's calls and latency
    show in /metrics, and so do the engine's steps."""
    prompts = synthetic_prompts(5, seed=17)
    oracle = tmp_path / "oracle.jsonl"
    lengths = {f"req-{index}": 10 - index for index in range(4)} | {"chat-1": 3}
    oracle.write_text("".join(json.dumps({"id": key, "true": value}) + "\n" for key, value in lengths.items()))
    config = server_config(tmp_path, tiny_model_dir, predictor=f"oracle:{oracle}")
    service = ServerService(config, fake_engine(tiny_engine, 1))
    with TestClient(create_app(service)) as client:
        info = client.get("/v1/models").json()["data"][0]["seqsched"]
        assert info["policy"] == "sjf" and info["predictor"] == f"oracle:{oracle}"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 6}
        assert client.post("/v1/chat/completions", json={**chat, "request_id": "chat-1"}).status_code == 200
        assert client.post("/v1/chat/completions", json=chat, headers={"x-request-id": "unknown"}).status_code == 200
        file = upload(client, jsonl(batch_lines(prompts, max_tokens=6)))
        batch = client.post(
            "/v1/batches",
            json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        ).json()
        assert wait_for_batch(client, batch["id"], ("completed",))["request_counts"]["completed"] == 5
        metrics = client.get("/metrics").text
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(values["seqsched_predictor_skipped_total"]) == 2, "both chats found the engine idle"
    assert float(values["seqsched_predictor_requests_total"]) >= 5
    assert float(values["seqsched_predictor_errors_total"]) >= 1, "req-4 is not in the oracle"
    assert float(values["seqsched_batch_lines_computed_total"]) == 5
    # The engine's pace: every step ran at least one request (one place here), and took time.
    steps = float(values["seqsched_engine_steps_total"])
    assert steps >= float(values["seqsched_generated_tokens_total"]) > 0
    assert float(values["seqsched_engine_step_rows_sum"]) == steps
    assert float(values["seqsched_engine_step_seconds_sum"]) > 0
