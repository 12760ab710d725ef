"""Requests of the OpenAI API parsed into our types, with OpenAI's 400 answers for what cannot be served.

A chat request's body is read by the very parser `seqsched serve` reads OpenAI Batch lines with
(seqsched.requests.parse_openai_batch), so a chat request and a batch line with the same body mean the same.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from seqsched.requests import RecordError, Request, parse_openai_batch
from serving.server.errors import APIError, bad_request

UNSUPPORTED = {
    "tools": None,
    "functions": None,
    "tool_choice": None,
    "logit_bias": None,
    "stop": None,
    "ignore_eos": False,
    "echo": False,
    "suffix": None,
    "best_of": 1,
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
}
"""Fields the server cannot honour, with the values that are harmless (a client sending them gets a 400)."""


@dataclass(frozen=True)
class Options:
    """Decoding and delivery options of one request."""

    model: str
    stream: bool = False
    include_usage: bool = False
    """stream_options.include_usage: a last chunk with the usage."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A /v1/chat/completions request."""

    request: Request
    """id (the body's `request_id`, the x-request-id header, or a new one), messages, max_tokens, temperature."""
    options: Options


@dataclass(frozen=True)
class CompletionRequest:
    """A /v1/completions request: a text prompt (no chat template) or its token ids."""

    id: str
    prompt: str | None
    prompt_ids: list[int] | None
    options: Options


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request's JSON object, or OpenAI's 400 for a body that is not one."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(
            f"We could not parse the JSON body of your request ({error}). The API expects a JSON payload."
        ) from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def new_id(prefix: str) -> str:
    """A fresh random id with OpenAI's prefix (chatcmpl-, cmpl-)."""
    return f"{prefix}{uuid.uuid4().hex}"


def _check_supported(body: dict[str, Any]) -> None:
    for name, harmless in UNSUPPORTED.items():
        if name not in body:
            continue
        allowed = harmless if isinstance(harmless, tuple) else (harmless,)
        if body[name] not in allowed:
            raise bad_request(f"'{name}' is not supported by this server.", name, "unsupported_parameter")
    count = body.get("n", 1)
    if count != 1:
        raise bad_request("Only n=1 is supported.", "n", "unsupported_parameter")


def _number(body: dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"'{name}' must be a number.", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        side = "(" if low_open else "["
        raise bad_request(f"'{name}' must be in {side}{low}, {high}], got {value}.", name, "invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer.", name, "invalid_type")
    if value < low:
        raise bad_request(f"'{name}' must be >= {low}, got {value}.", name, "invalid_value")
    return value


def options(body: dict[str, Any]) -> Options:
    """The options every generation request shares (model, stream, sampling); 400 for bad ones."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model", "missing_required_parameter")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", "stream", "invalid_type")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options", "invalid_type")
    _check_supported(body)
    max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1)
    return Options(
        model=model,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage", False)),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, low_open=True),
        seed=_integer(body, "seed", -(2**63)),
    )


def request_id(body: dict[str, Any], header: str | None) -> str:
    """The request's id: the body's `request_id` (vLLM's extension), the x-request-id header, or a new one. An
    oracle predictor looks lengths up by it."""
    value = body.get("request_id")
    if isinstance(value, str) and value:
        return value
    return header or new_id("chatcmpl-")


PARAMS = ("messages", "max_tokens", "max_completion_tokens", "temperature")


def _param(problem: str) -> str | None:
    for name in PARAMS:
        if name in problem:
            return name
    return "messages" if "message" in problem or "role" in problem else None


def parse_chat(body: dict[str, Any], served_model: str, header_id: str | None = None) -> ChatRequest:
    """A chat completion request for the served model (404 for another); its messages are read as `seqsched serve`
    reads an OpenAI Batch line's body."""
    opts = options(body)
    check_model(opts.model, served_model)
    identifier = request_id(body, header_id)
    try:
        request = parse_openai_batch({"custom_id": identifier, "body": body}, identifier)
    except RecordError as error:
        problem = str(error).replace("body.", "")
        raise bad_request(problem[:1].upper() + problem[1:] + ".", _param(problem), "invalid_value") from None
    return ChatRequest(request, opts)


def parse_completion(body: dict[str, Any], served_model: str, header_id: str | None = None) -> CompletionRequest:
    """A text completion request for the served model: prompt as a string, a list of one string, or token ids."""
    opts = options(body)
    check_model(opts.model, served_model)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a list: the only batch size served
    identifier = request_id(body, header_id).replace("chatcmpl-", "cmpl-")
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' must not be empty.", "prompt", "invalid_value")
        return CompletionRequest(identifier, prompt, None, opts)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if min(prompt) < 0:
            raise bad_request("Token ids in 'prompt' must be >= 0.", "prompt", "invalid_value")
        return CompletionRequest(identifier, None, list(prompt), opts)
    raise bad_request(
        "'prompt' must be a string, a list of one string, or a list of token ids.", "prompt", "invalid_type"
    )


def check_model(requested: str, served: str) -> None:
    """404 unless the request names the served model."""
    if requested != served:
        raise APIError(
            404,
            f"The model `{requested}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
