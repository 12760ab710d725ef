"""Batch input and output files: OpenAI Batch JSONL (as `vllm run-batch` reads and writes it), plain JSONL,
ShareGPT/Alpaca JSON. Every input record gets exactly one output line, in input order: a bad record becomes
an error line (for its custom_id, or its line number when none can be read) and the rest are served."""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqsched.files import write_jsonl
from seqsched.requests import (
    PARSERS,
    InputFormat,
    RecordError,
    Request,
    Unreadable,
    detect_format,
    iter_records,
    read_requests,
)
from serving.runner import RequestRecord


class OutputFormat(enum.Enum):
    """How results are written; AUTO follows the input (OpenAI Batch in, OpenAI Batch out)."""

    AUTO = "auto"
    OPENAI = "openai"
    PLAIN = "plain"


@dataclass(frozen=True)
class InputRecord:
    """One record of the input file: a request, or why it could not be read."""

    position: int | str
    """Line number (JSONL) or 'record N' (JSON array, dataset folder), both counted from 1."""
    request: Request | None
    error: str | None = None
    custom_id: str | None = None
    """The record's id when it could be read, also for a bad record."""


@dataclass
class BatchInput:
    """An input file's records in file order."""

    path: str
    records: list[InputRecord]
    openai: bool
    """True when the file is OpenAI Batch JSONL (then the output is too, by default)."""

    @property
    def requests(self) -> list[Request]:
        """The readable requests, in file order."""
        return [record.request for record in self.records if record.request is not None]

    @property
    def errors(self) -> list[InputRecord]:
        """The records that could not be read."""
        return [record for record in self.records if record.request is None]


def _record_id(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    for key in ("custom_id", "id"):
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def read_batch_input(path: str | Path, fmt: InputFormat = InputFormat.AUTO) -> BatchInput:
    """Read every record of a request file, keeping the unreadable ones as errors (nothing is dropped)."""
    path = Path(path)
    if path.is_dir() or fmt is InputFormat.HF_DATASET:
        read = read_requests(path, InputFormat.HF_DATASET)
        records = [
            InputRecord(f"record {number}", request, custom_id=request.id)
            for number, request in enumerate(read.requests, start=1)
        ]
        return BatchInput(str(path), records, openai=False)
    if not path.is_file():
        from seqsched.errors import InputError

        raise InputError(path, None, "no such input file")
    records: list[InputRecord] = []
    seen: set[str] = set()
    formats: list[InputFormat] = []
    for count, (position, raw) in enumerate(iter_records(path)):
        try:
            if isinstance(raw, Unreadable):
                raise RecordError(raw.problem)
            if not isinstance(raw, Mapping):
                raise RecordError(f"a record must be a JSON object, got {type(raw).__name__}")
            record_fmt = fmt
            if fmt is InputFormat.AUTO:
                try:
                    record_fmt = detect_format(raw)
                except RecordError:
                    if not formats:
                        raise
                    record_fmt = formats[0]  # judge it as the file's format: its error then names the missing field
            formats.append(record_fmt)
            request = PARSERS[record_fmt](raw, str(count + 1))
            if request.id in seen:
                raise RecordError(f"duplicate id {request.id!r} (ids must be unique in a batch)", request.id)
            seen.add(request.id)
            records.append(InputRecord(position, request, custom_id=request.id))
        except RecordError as error:
            custom_id = error.record_id or (None if isinstance(raw, Unreadable) else _record_id(raw))
            records.append(InputRecord(position, None, f"{path}:{position}: {error}", custom_id))
    openai = fmt is InputFormat.OPENAI_BATCH or (bool(formats) and formats[0] is InputFormat.OPENAI_BATCH)
    if not formats and records and path.suffix == ".jsonl":
        openai = True  # nothing readable at all: answer in the format a batch API client expects
    return BatchInput(str(path), records, openai)


def _uid() -> str:
    return uuid.uuid4().hex


def openai_success(record: RequestRecord, custom_id: str, model: str, created: int) -> dict[str, Any]:
    """An OpenAI Batch output line for a served request (vLLM run-batch's shape)."""
    return {
        "id": f"seqsched-{_uid()}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"seqsched-batch-{_uid()}",
            "body": {
                "id": f"chatcmpl-{_uid()}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": record.text},
                        "finish_reason": record.finish_reason.value,
                    }
                ],
                "usage": {
                    "prompt_tokens": record.prompt_tokens,
                    "completion_tokens": record.num_tokens,
                    "total_tokens": record.prompt_tokens + record.num_tokens,
                },
            },
        },
        "error": None,
    }


def openai_error(
    custom_id: str | None, message: str, position: int | str, code: str = "invalid_request", status: int = 400
) -> dict[str, Any]:
    """An OpenAI Batch output line for a record that could not be served (status 400: the request's fault)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if isinstance(position, int):
        error["line"] = position
    return {
        "id": f"seqsched-{_uid()}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"seqsched-batch-{_uid()}", "body": None},
        "error": error,
    }


def plain_success(request: Request, record: RequestRecord) -> dict[str, Any]:
    """A plain JSONL output line for a served request."""
    return {
        "id": request.id,
        "prompt": request.prompt,
        "output": record.text,
        "num_tokens": record.num_tokens,
        "finish_reason": record.finish_reason.value,
        "predicted": record.predicted,
        "recomputed": record.recomputed,
        "completion_s": round(record.completion_s, 3),
    }


def plain_error(custom_id: str | None, message: str, position: int | str, code: str | None = None) -> dict[str, Any]:
    """A plain JSONL output line for a record that could not be served."""
    line: dict[str, Any] = {"id": custom_id, "error": message, "position": position}
    if code is not None:
        line["code"] = code
    return line


SERVER_ERRORS = frozenset({"out_of_memory"})
"""Error codes that are the server's failure, not the request's (status 500 in OpenAI Batch output)."""


def output_lines(
    batch: BatchInput, results: Sequence[RequestRecord], output_format: OutputFormat, model: str
) -> Iterator[dict[str, Any]]:
    """One output line per input record, in input order; results are the readable requests' records in order (a
    record with an error, e.g. a prompt too long for the model, becomes that request's error line)."""
    openai = output_format is OutputFormat.OPENAI or (output_format is OutputFormat.AUTO and batch.openai)
    created = int(time.time())
    served = iter(results)
    for record in batch.records:
        if record.request is None:
            assert record.error is not None
            yield (
                openai_error(record.custom_id, record.error, record.position)
                if openai
                else plain_error(record.custom_id, record.error, record.position)
            )
            continue
        result = next(served)
        if result.id != record.request.id:
            raise AssertionError(f"results out of order: {result.id!r} for {record.request.id!r}")
        if result.error is not None:
            code = result.error_code or "invalid_request"
            message = f"{batch.path}:{record.position}: {result.error}"
            yield (
                openai_error(result.id, message, record.position, code, 500 if code in SERVER_ERRORS else 400)
                if openai
                else plain_error(result.id, message, record.position, code)
            )
            continue
        yield (
            openai_success(result, record.request.id, model, created)
            if openai
            else plain_success(record.request, result)
        )
    if next(served, None) is not None:
        raise AssertionError("more results than readable input records")


def write_batch_output(
    path: str | Path,
    batch: BatchInput,
    results: Sequence[RequestRecord],
    output_format: OutputFormat = OutputFormat.AUTO,
    model: str = "seqsched",
) -> None:
    """Write every record's output line atomically (a partial file never replaces the target)."""
    write_jsonl(path, list(output_lines(batch, results, output_format, model)))
