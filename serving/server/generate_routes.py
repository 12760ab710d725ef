"""/v1/chat/completions and /v1/completions: parse, turn away what cannot be served, predict, queue, answer (whole,
or streamed as server-sent events ending in `data: [DONE]`)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from seqsched.requests import Request as SeqschedRequest
from serving.runner import RequestRecord
from serving.server.errors import APIError, bad_request
from serving.server.interactive import Finished, Generation, predicted_length
from serving.server.objects import chat_chunk, chat_completion, text_chunk, text_completion, usage
from serving.server.protocol import new_id, parse_chat, parse_completion, parse_json
from serving.server.service import ServerService

router = APIRouter()


def service_of(request: Request) -> ServerService:
    """The service the app was built over."""
    return request.app.state.service


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    """A chat completion, queued with every other request and batch line."""
    service = service_of(request)
    model = service.config.model_name
    chat = parse_chat(parse_json(await request.body()), model, request.headers.get("x-request-id"))
    ids, rejected = await run_in_threadpool(service.encoder.chat, [chat.request])
    if rejected:
        raise bad_request(rejected[0].problem[:1].upper() + rejected[0].problem[1:] + ".", "messages", rejected[0].code)
    predicted = await predicted_length(service, chat.request)
    generation = Generation(service, ids[0], chat.options, predicted)
    completion_id, created = new_id("chatcmpl-"), int(time.time())
    if not chat.options.stream:
        finished = await generation.result(request.is_disconnected)
        record = _record(chat.request.id, finished)
        return JSONResponse(chat_completion(record, completion_id, model, created))

    with_usage = chat.options.include_usage

    def chunk(delta: dict[str, str] | None, reason: str | None = None, used: dict[str, int] | None = None) -> str:
        return sse(chat_chunk(completion_id, model, created, delta, reason, used, with_usage))

    async def events() -> AsyncIterator[str]:
        first = True
        async for item in _stream(generation):
            if isinstance(item, str):
                # The role comes with the first text, as vLLM sends it: a client's time to first token stays true.
                delta = {"role": "assistant", "content": item} if first else {"content": item}
                first = False
                yield chunk(delta)
            elif isinstance(item, Finished):
                if first:
                    yield chunk({"role": "assistant", "content": ""})
                yield chunk({}, item.row.finish_reason.value)
                if with_usage:
                    yield chunk(None, None, usage(item.prompt_tokens, item.row.num_tokens))
            else:
                yield sse(item)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    """A text completion (no chat template), queued with every other request and batch line."""
    service = service_of(request)
    model = service.config.model_name
    completion = parse_completion(parse_json(await request.body()), model, request.headers.get("x-request-id"))
    ids = completion.prompt_ids
    if ids is None:
        assert completion.prompt is not None
        ids = await run_in_threadpool(service.encoder.text, completion.prompt)
    why = service.encoder.check_ids(ids, completion.options.max_tokens)
    if why is not None:
        raise bad_request(why.problem[:1].upper() + why.problem[1:] + ".", "prompt", why.code)
    text = completion.prompt if completion.prompt is not None else service.encoder.decode(ids)
    predicted = await predicted_length(service, SeqschedRequest(id=completion.id, prompt=text))
    generation = Generation(service, ids, completion.options, predicted)
    created = int(time.time())
    if not completion.options.stream:
        finished = await generation.result(request.is_disconnected)
        row = finished.row
        body = text_completion(
            completion.id, model, created, row.text, row.finish_reason.value, finished.prompt_tokens, row.num_tokens
        )
        return JSONResponse(body)

    with_usage = completion.options.include_usage

    def chunk(piece: str | None, reason: str | None = None, used: dict[str, int] | None = None) -> str:
        return sse(text_chunk(completion.id, model, created, piece, reason, used, with_usage))

    async def events() -> AsyncIterator[str]:
        async for item in _stream(generation):
            if isinstance(item, str):
                yield chunk(item)
            elif isinstance(item, Finished):
                yield chunk("", item.row.finish_reason.value)
                if with_usage:
                    yield chunk(None, None, usage(item.prompt_tokens, item.row.num_tokens))
            else:
                yield sse(item)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _stream(generation: Generation) -> AsyncIterator[str | Finished | dict[str, Any]]:
    """The generation's deltas and result; an error after the stream started comes as its OpenAI error body."""
    try:
        async for item in generation.deltas():
            yield item
    except APIError as error:
        yield error.body()


def _record(request_id: str, finished: Finished) -> RequestRecord:
    row = finished.row
    return RequestRecord(request_id, row.text, list(row.token_ids), row.finish_reason, finished.prompt_tokens, 0, None)
