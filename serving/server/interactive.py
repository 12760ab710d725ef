"""One interactive request (chat or text completion) from arrival to answer: predicted, queued beside the batch
lines, and its tokens handed from the engine thread to the HTTP handler's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from seqsched.engines.api import RowOutput, SamplingParams
from seqsched.requests import Request
from serving.server.errors import APIError, bad_request
from serving.server.protocol import Options
from serving.server.queue import Lane
from serving.server.service import ServerService
from serving.server.worker import CANCELLED, Work

DISCONNECT_POLL_S = 1.0
"""How often a waiting non-streamed request checks whether its client left (then it is cancelled)."""


class AsyncSink:
    """Hands engine-thread events to an asyncio queue on the handler's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def tokens(self, token_ids: list[int]) -> None:
        """New tokens (streamed requests)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("tokens", token_ids))

    def done(self, row: RowOutput) -> None:
        """The finished row."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("done", row))

    def failed(self, message: str, code: str, status: int) -> None:
        """Why it will not finish."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("failed", (message, code, status)))


@dataclass
class Finished:
    """A served request: its row and token counts."""

    row: RowOutput
    prompt_tokens: int


class Generation:
    """A queued interactive request: iterate deltas() (streaming) or await result()."""

    def __init__(self, service: ServerService, prompt_ids: list[int], options: Options, predicted: int | None) -> None:
        self.service = service
        self.prompt_ids = prompt_ids
        config = service.config
        self.max_tokens = min(config.limit, options.max_tokens or config.limit)
        temperature = config.temperature if options.temperature is None else options.temperature
        sampling = SamplingParams(
            temperature=temperature, top_p=config.top_p if options.top_p is None else options.top_p
        )
        self.sink = AsyncSink(asyncio.get_running_loop())
        work = Work(
            lane=Lane.INTERACTIVE,
            prompt_ids=prompt_ids,
            max_tokens=self.max_tokens,
            sink=self.sink,
            sampling=sampling,
            seed=options.seed,  # none given: a fresh sample each time, as OpenAI's
            predicted=predicted,
            stream=options.stream,
        )
        self.key = service.worker.submit(work)
        self.finished = False

    def cancel(self) -> None:
        """Cancel it (the client left)."""
        if not self.finished:
            self.service.worker.cancel(self.key)
            self.finished = True
            self.service.metrics.finished(Lane.INTERACTIVE.value, CANCELLED)

    async def result(self, disconnected: Callable[[], Awaitable[bool]] | None = None) -> Finished:
        """Wait for the row (non-streamed); APIError if it failed; cancelled when the client leaves."""
        while True:
            try:
                kind, value = await asyncio.wait_for(self.sink.events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if disconnected is not None and await disconnected():
                    self.cancel()
                    raise asyncio.CancelledError from None
                continue
            if kind == "done":
                return self._finish(value)
            if kind == "failed":
                raise self._failure(value)

    async def deltas(self) -> AsyncIterator[str | Finished]:
        """Text as it is generated (str pieces), then the Finished result. Text is held back while it ends inside
        a character (a byte-level token may carry part of one)."""
        tokens: list[int] = []
        sent = ""
        try:
            while True:
                kind, value = await self.sink.events.get()
                if kind == "tokens":
                    tokens.extend(value)
                    text = self.service.encoder.decode(tokens)
                    if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                        yield text[len(sent) :]
                        sent = text
                elif kind == "done":
                    finished = self._finish(value)
                    if value.text.startswith(sent) and len(value.text) > len(sent):
                        yield value.text[len(sent) :]
                    yield finished
                    return
                else:
                    raise self._failure(value)
        finally:
            self.cancel()  # the client left mid-stream (a finished request is not cancelled)

    def _finish(self, row: RowOutput) -> Finished:
        self.finished = True
        if row.error is not None:
            self.service.metrics.finished(Lane.INTERACTIVE.value, "failed")
            if row.error_code == "context_length_exceeded":  # vLLM's context ended it: the request's own fault
                raise bad_request(row.error, "messages", row.error_code)
            raise APIError(500, row.error, "server_error", None, row.error_code)
        self.service.metrics.finished(Lane.INTERACTIVE.value, "completed")
        return Finished(row, len(self.prompt_ids))

    def _failure(self, value: tuple[str, str, int]) -> APIError:
        self.finished = True
        message, code, status = value
        self.service.metrics.finished(Lane.INTERACTIVE.value, "failed")
        if status == 400:
            return bad_request(message, None, code)
        return APIError(status, message, "server_error", None, code)


async def predicted_length(service: ServerService, request: Request) -> int | None:
    """The request's predicted length (None without a predictor, or when it failed for this request). A request
    that finds the engine with room and nothing queued is released at once, so it is not predicted: its rank could
    not matter, and the prediction would only delay it (measured: ~20 ms a request, and a turn on the engine
    thread). The queue ranks an unpredicted request as the longest if it does wait (a race with another arrival)."""
    if service.predictions is None:
        return None
    if service.worker.has_room():
        service.metrics.skipped_prediction()
        return None
    lengths = await asyncio.wrap_future(service.predictions.submit([request]))
    return lengths[0]
