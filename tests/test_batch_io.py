"""OpenAI Batch JSONL in and out: bad lines become error lines, nothing is lost, order is kept."""

from __future__ import annotations

import json
from pathlib import Path

from seqsched.engines.api import FinishReason
from seqsched.requests import InputFormat
from serving.batch_io import OutputFormat, output_lines, read_batch_input, write_batch_output
from serving.runner import RequestRecord


def openai_line(custom_id: str, content: str, **body: object) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": content}], **body},
        }
    )


def write_mixed_batch(path: Path) -> None:
    lines = [
        openai_line("a", "say cat 2 times", max_tokens=8),
        "{not json",
        json.dumps({"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        "",
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}),
        openai_line("a", "duplicate id"),
        "[1, 2]",
        openai_line("f", "say dog 3 times", temperature=0.0),
        json.dumps({"custom_id": "g", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}}),
    ]
    path.write_text("\n".join(lines) + "\n")


def record(request_id: str, text: str, tokens: list[int]) -> RequestRecord:
    return RequestRecord(
        id=request_id,
        text=text,
        token_ids=tokens,
        finish_reason=FinishReason.STOP,
        prompt_tokens=7,
        limit=512,
        predicted=3,
    )


def test_bad_lines_become_errors_with_their_custom_id_or_line(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    write_mixed_batch(path)
    batch = read_batch_input(path)
    assert batch.openai
    assert [r.request.id if r.request else None for r in batch.records] == [
        "a",
        None,
        None,
        None,
        None,
        None,
        "f",
        None,
    ]
    assert [r.position for r in batch.records] == [1, 2, 3, 5, 6, 7, 8, 9], "the blank line is no record"
    errors = {r.position: (r.custom_id, r.error) for r in batch.errors}
    assert errors[2][0] is None and "invalid JSON" in errors[2][1] and f"{path}:2:" in errors[2][1]
    assert errors[3][0] == "c" and "unsupported url" in errors[3][1]
    assert errors[5][0] is None and "custom_id" in errors[5][1]
    assert errors[6][0] == "a" and "duplicate id 'a'" in errors[6][1]
    assert errors[7][0] is None and "JSON object" in errors[7][1]
    assert errors[9][0] == "g" and "max_tokens" in errors[9][1]
    assert batch.requests[0].max_tokens == 8 and batch.requests[1].temperature == 0.0


def test_output_lines_keep_input_order_in_the_openai_shape(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    write_mixed_batch(path)
    batch = read_batch_input(path)
    out = tmp_path / "out.jsonl"
    write_batch_output(out, batch, [record("a", "cat cat", [5, 5]), record("f", "dog", [6])], model="tiny")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(batch.records), "one output line per input record"
    assert [line["custom_id"] for line in lines] == ["a", None, "c", None, "a", None, "f", "g"]
    first = lines[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "cat cat"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    bad = lines[1]
    assert bad["response"] == {"status_code": 400, "request_id": bad["response"]["request_id"], "body": None}
    assert bad["error"]["line"] == 2 and "invalid JSON" in bad["error"]["message"]
    assert len({line["id"] for line in lines}) == len(lines)


def test_plain_input_gets_plain_output(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_text('{"id": "x", "prompt": "say cat 1 times"}\n{"id": "y"}\n')
    batch = read_batch_input(path)
    assert not batch.openai and len(batch.requests) == 1
    lines = list(output_lines(batch, [record("x", "cat", [5])], OutputFormat.AUTO, "m"))
    assert lines[0]["id"] == "x" and lines[0]["output"] == "cat" and lines[0]["finish_reason"] == "stop"
    assert lines[1] == {"id": "y", "error": f"{path}:2: missing field 'prompt'", "position": 2}
    forced = list(output_lines(batch, [record("x", "cat", [5])], OutputFormat.OPENAI, "m"))
    assert forced[0]["custom_id"] == "x" and forced[1]["response"]["status_code"] == 400


def test_sharegpt_json_array_and_forced_format(tmp_path: Path) -> None:
    path = tmp_path / "chats.json"
    path.write_text(
        json.dumps(
            [
                {"id": "1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
                {"id": "2", "conversations": []},
            ]
        )
    )
    batch = read_batch_input(path)
    assert [r.position for r in batch.records] == ["record 1", "record 2"]
    assert batch.requests[0].reference == "hello" and batch.errors[0].custom_id == "2"
    forced = read_batch_input(path, InputFormat.ALPACA)
    assert not forced.requests and len(forced.errors) == 2
