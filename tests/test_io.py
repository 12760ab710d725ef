"""Reading instructions from every supported format, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqsched.errors import InputError
from seqsched.files import write_jsonl
from seqsched.requests import InputFormat, alpaca_prompt, read_requests


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sharegpt_json(tmp_path: Path) -> None:
    records = [
        {
            "id": "5",
            "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}],
        },
        {"id": 7, "conversations": [{"from": "human", "value": "Name a color"}]},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(records))
    requests = read_requests(path).requests
    assert [(r.id, r.prompt, r.reference) for r in requests] == [
        ("5", "Hi there", "Hello"),
        ("7", "Name a color", None),
    ]
    assert requests[0].chat() == [{"role": "user", "content": "Hi there"}]


def test_shared_data_excerpt_reads(shared_data: Path) -> None:
    requests = read_requests(shared_data / "alpaca-val-10k.json").requests
    assert len(requests) == 10_000
    assert len({r.id for r in requests}) == 10_000
    assert all(r.prompt.strip() for r in requests)


def test_alpaca_json_and_jsonl(tmp_path: Path) -> None:
    record = {"instruction": "Translate the sentence.", "input": "Good morning", "output": "Buenos dias"}
    (tmp_path / "a.json").write_text(json.dumps([record, {"instruction": "Say hi", "input": "", "output": ""}]))
    write_lines(tmp_path / "a.jsonl", [json.dumps(record)])
    from_json = read_requests(tmp_path / "a.json").requests
    assert [r.prompt for r in from_json] == ["Translate the sentence: Good morning", "Say hi"]
    assert [r.id for r in from_json] == ["1", "2"]
    assert read_requests(tmp_path / "a.jsonl").requests[0].reference == "Buenos dias"
    assert alpaca_prompt("Do it.", None) == "Do it."


def test_plain_jsonl_and_openai_batch(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "p.jsonl",
        [json.dumps({"id": "a", "prompt": "one"}), "", json.dumps({"id": "b", "prompt": "two"})],
    )
    assert [r.id for r in read_requests(tmp_path / "p.jsonl").requests] == ["a", "b"]
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "x",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
            "max_tokens": 64,
            "temperature": 0.5,
        },
    }
    write_lines(tmp_path / "batch.jsonl", [json.dumps(line)])
    request = read_requests(tmp_path / "batch.jsonl").requests[0]
    assert (request.id, request.prompt, request.max_tokens, request.temperature) == ("req-1", "Why?", 64, 0.5)
    assert request.chat()[0] == {"role": "system", "content": "Be brief."}


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps({"id": "a", "prompt": "ok"}), "{not json", json.dumps({"id": "c", "prompt": 3})],
    )
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON"):
        read_requests(path)
    result = read_requests(path, skip_bad=True)
    assert [r.id for r in result.requests] == ["a"]
    assert [(b.where, b.problem) for b in result.bad] == [
        (2, "invalid JSON (Expecting property name enclosed in double quotes, column 2)"),
        (3, "field 'prompt' must be a string, got int"),
    ]
    assert str(result.bad[1]).startswith(f"{path}:3:")


def test_json_array_errors_name_record_index(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"id": "1", "conversations": []}]))
    with pytest.raises(InputError, match=r"x\.json:record 1: missing or empty 'conversations'"):
        read_requests(path)
    path.write_text('[{"id": "1",\n "conversations": [}]')
    with pytest.raises(InputError, match=r"x\.json:2: invalid JSON"):
        read_requests(path)


def test_duplicate_ids_and_unknown_format(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"id": "a", "prompt": "x"})] * 2)
    with pytest.raises(InputError, match=r"d\.jsonl:2: duplicate id 'a'"):
        read_requests(path)
    path = write_lines(tmp_path / "u.jsonl", [json.dumps({"question": "x"})])
    with pytest.raises(InputError, match="unknown record format"):
        read_requests(path)
    with pytest.raises(InputError, match="no such file"):
        read_requests(tmp_path / "missing.jsonl")


def test_forced_format_and_openai_errors(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "o.jsonl", [json.dumps({"custom_id": "r", "url": "/v1/embeddings", "body": {}})])
    with pytest.raises(InputError, match="unsupported url"):
        read_requests(path, InputFormat.OPENAI_BATCH)


def test_dataset_folder(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([{"id": "x", "prompt": "hello", "label": 50}]).save_to_disk(str(tmp_path / "ds"))
    assert [r.prompt for r in read_requests(tmp_path / "ds").requests] == ["hello"]


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.jsonl"
    write_jsonl(target, [{"a": 1}, {"a": 2}])
    assert target.read_text().splitlines() == ['{"a": 1}', '{"a": 2}']
    assert not list(target.parent.glob(".*partial"))


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from seqsched.files import write_json

    path = write_json(tmp_path / "result.json", {"a": 1})
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert not [item for item in tmp_path.iterdir() if item.name.startswith(".")], "no staging file left"
