"""`seqsched server` behind a real uvicorn on 127.0.0.1 (a free port), driven by the official `openai` client: the
whole Batch API lifecycle, chat completions whole and streamed, text completions, the API key, errors as the
client's exception types."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from seqsched.engines.hf import HFEngine
from serving.server.app import create_app
from serving.server.service import ServerService
from tests.test_server_app import MODEL, batch_lines, fake_engine, greedy_text, jsonl, server_config
from tests.tiny_model import synthetic_prompts

KEY = "test-key"


@contextmanager
def uvicorn_server(service: ServerService) -> Iterator[str]:
    """The app served by uvicorn on a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture()
def base_url(tmp_path: Path, tiny_model_dir: Path, tiny_engine: HFEngine) -> Iterator[str]:
    service = ServerService(server_config(tmp_path, tiny_model_dir, api_key=KEY), fake_engine(tiny_engine))
    with uvicorn_server(service) as url:
        yield url


def test_openai_client_runs_the_batch_lifecycle(base_url: str, tiny_engine: HFEngine) -> None:
    prompts = synthetic_prompts(5, seed=21)
    expected = [greedy_text(tiny_engine, prompt, 10) for prompt in prompts]
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL]
    lines = batch_lines(prompts, max_tokens=10)
    lines.insert(1, '{"custom_id": "bad", "body": {}}')
    file = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert file.id.startswith("file-") and file.purpose == "batch" and file.bytes > 0
    assert client.files.retrieve(file.id).filename == "requests.jsonl"
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 5, 1)
    assert batch.output_file_id and batch.error_file_id
    results = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in results] == [f"req-{index}" for index in range(5)]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in results] == expected
    error = json.loads(client.files.content(batch.error_file_id).text.splitlines()[0])
    assert error["custom_id"] == "bad" and error["error"]["line"] == 2
    assert batch.id in [item.id for item in client.batches.list()]
    second = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = client.batches.cancel(second.id)
    assert cancelled.status in ("cancelling", "cancelled", "completed")
    assert [item.id for item in client.files.list(purpose="batch")] == [file.id]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")


def test_openai_client_chat_and_completions(base_url: str, tiny_engine: HFEngine) -> None:
    prompt = synthetic_prompts(1, seed=8)[0]
    expected = greedy_text(tiny_engine, prompt, 12)
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": prompt}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    assert whole.choices[0].message.content == expected and whole.usage is not None
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = client.completions.create(model=MODEL, prompt="say dog 2 times", max_tokens=6)
    assert text.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-unknown", messages=messages)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 300}])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
