"""A vLLM-like backend for CPU tests: vLLM's offline API shape over the tiny HF model.

It emulates continuous batching with vLLM's priority policy: waiting requests are admitted by
(priority, arrival) up to max_num_seqs; every step() advances each running request by one token; a
request that ends (EOS or max_tokens) returns finished and frees its slot. Tokens come from a real
HFEngine, and, as vLLM does, a stop token stays at the end of token_ids.
"""

from __future__ import annotations

import heapq
import itertools
import types
from dataclasses import dataclass, field
from typing import Any

from seqsched.engines.hf import HFEngine


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)


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
class _Running:
    request_id: str
    tokens: list[int]
    finish_reason: str
    cursor: int = 0


class FakeLLMEngine:
    def __init__(self, engine: HFEngine, max_num_seqs: int) -> None:
        self.engine = engine
        self.max_num_seqs = max_num_seqs
        self.waiting: list[tuple[int, int, str, list[int], SamplingParams]] = []
        self.running: list[_Running] = []
        self.arrivals = itertools.count()
        self.admitted: list[str] = []
        self.steps = 0

    def add_request(self, request_id: str, prompt: dict[str, Any], params: SamplingParams, priority: int = 0) -> None:
        heapq.heappush(
            self.waiting, (priority, next(self.arrivals), request_id, list(prompt["prompt_token_ids"]), params)
        )

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            _, _, request_id, ids, params = heapq.heappop(self.waiting)
            row = self.engine.generate([ids], params.max_tokens).rows[0]
            tokens = list(row.token_ids)
            stopped = row.finish_reason.value == "stop"
            if stopped:
                tokens.append(self.engine.tokenizer.eos_token_id)
            self.running.append(_Running(request_id, tokens, "stop" if stopped else "length"))
            self.admitted.append(request_id)

    def step(self) -> list[RequestOutput]:
        self._admit()
        self.steps += 1
        outputs: list[RequestOutput] = []
        still: list[_Running] = []
        for run in self.running:
            run.cursor += 1
            done = run.cursor >= len(run.tokens)
            outputs.append(
                RequestOutput(
                    run.request_id,
                    [CompletionOutput(run.tokens[: run.cursor], run.finish_reason if done else None)],
                    done,
                )
            )
            if not done:
                still.append(run)
        self.running = still
        return outputs


class LLM:
    def __init__(self, engine: HFEngine, max_num_seqs: int = 4) -> None:
        self.llm_engine = FakeLLMEngine(engine, max_num_seqs)


def fake_vllm_module() -> types.ModuleType:
    """A module object with the names VLLMEngine uses from vllm."""
    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    module.LLM = LLM  # type: ignore[attr-defined]
    return module
