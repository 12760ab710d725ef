"""Prompts to token ids off the engine thread, and the rule that turns a request away before it queues (the one
`seqsched serve` applies: serving.runner.prompt_checks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seqsched.engines.api import context_length
from seqsched.requests import Request
from serving.runner.prompt_checks import CONTEXT_LENGTH_EXCEEDED, PROMPT_TOO_LONG, Rejection, rejections


@dataclass
class _Encoded:
    """An engine stand-in for prompt_checks.rejections that answers encode() from ids already computed."""

    ids: dict[str, list[int]]
    context_length: int | None

    def encode(self, messages: Any) -> list[int]:
        return self.ids[json.dumps(messages)]


@dataclass
class PromptEncoder:
    """Encodes prompts with the engine's tokenizer and chat template (a lock keeps callers off each other: the
    HTTP handlers' threads and the job threads) and judges whether they fit."""

    engine: Any
    limit: int
    max_prompt_tokens: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context(self) -> int | None:
        """The engine's context length, when it says."""
        return context_length(self.engine)

    def chat(self, requests: Sequence[Request]) -> tuple[list[list[int]], dict[int, Rejection]]:
        """Each request's prompt ids (chat template applied, as `seqsched serve` encodes it) and the requests (by
        index) that cannot be served: too long a prompt for --max_prompt_tokens, or prompt plus cap over the
        context."""
        with self._lock:
            ids = [list(self.engine.encode(request.chat())) for request in requests]
        known = _Encoded({json.dumps(r.chat()): i for r, i in zip(requests, ids, strict=True)}, self.context)
        return ids, rejections(known, requests, self.limit, self.max_prompt_tokens)

    def text(self, prompt: str) -> list[int]:
        """A raw text prompt's ids (/v1/completions: no chat template)."""
        with self._lock:
            return list(self.engine.tokenizer(prompt)["input_ids"])

    def check_ids(self, prompt_ids: Sequence[int], max_tokens: int | None) -> Rejection | None:
        """The same rule for a prompt given as ids (why it cannot be served, or None)."""
        cap = min(self.limit, max_tokens or self.limit)
        tokens = len(prompt_ids)
        if self.max_prompt_tokens is not None and tokens > self.max_prompt_tokens:
            problem = f"the prompt has {tokens} tokens, more than --max_prompt_tokens {self.max_prompt_tokens}"
            return Rejection(problem, PROMPT_TOO_LONG, tokens, cap)
        context = self.context
        if context is not None and tokens + cap > context:
            problem = (
                f"the prompt's {tokens} tokens plus up to {cap} generated exceed the model's context of {context} "
                "tokens; shorten the prompt or lower its max_tokens"
            )
            return Rejection(problem, CONTEXT_LENGTH_EXCEEDED, tokens, cap)
        return None

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens dropped (as the engine decodes a finished row)."""
        return self.engine.decode(token_ids)
