"""The JSON objects the API answers with, in OpenAI's shapes (chat.completion is the very body `seqsched serve`
writes into an OpenAI Batch output line: serving.batch_io.openai_success)."""

from __future__ import annotations

import time
from typing import Any

from serving.batch_io import openai_success
from serving.runner import RequestRecord


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(record: RequestRecord, completion_id: str, model: str, created: int) -> dict[str, Any]:
    """A chat.completion: the body of the batch output line `seqsched serve` writes for the same record."""
    body = openai_success(record, record.id, model, created)["response"]["body"]
    body["id"] = completion_id
    body["choices"][0]["logprobs"] = None
    return body


def chat_chunk(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, str] | None,
    finish_reason: str | None = None,
    usage_value: dict[str, int] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """A chat.completion.chunk; delta None makes the usage chunk (no choices) that stream_options asks for."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = usage_value
    return chunk


def text_completion(
    completion_id: str, model: str, created: int, text: str, finish_reason: str, prompt_tokens: int, tokens: int
) -> dict[str, Any]:
    """A text_completion (/v1/completions)."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, tokens),
    }


def text_chunk(
    completion_id: str,
    model: str,
    created: int,
    text: str | None,
    finish_reason: str | None = None,
    usage_value: dict[str, int] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """A streamed text_completion chunk; text None makes the usage chunk."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": []
        if text is None
        else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = usage_value
    return chunk


def model_list(model: str, created: int, seqsched: dict[str, Any]) -> dict[str, Any]:
    """/v1/models: the served model, with the predictor and policy in use under `seqsched` (our field)."""
    return {"object": "list", "data": [model_object(model, created, seqsched)]}


def model_object(model: str, created: int, seqsched: dict[str, Any]) -> dict[str, Any]:
    """One model object."""
    return {"id": model, "object": "model", "created": created, "owned_by": "seqsched", "seqsched": seqsched}


def file_object(
    file_id: str, filename: str, purpose: str, size: int, created_at: int, status: str = "processed"
) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": status,
        "expires_at": None,
        "status_details": None,
    }


def batch_object(
    batch_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    window_s: int,
    model: str,
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    """A new Batch object (status validating), every field of OpenAI's present."""
    now = int(time.time())
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": model,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + window_s,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page (the openai client pages with `after` = the last item's id while has_more)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
