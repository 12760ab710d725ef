"""Requests that cannot be served are turned away before the run, each with its reason, so that one bad request
becomes one error line instead of a crashed batch: a prompt that with its max_tokens does not fit the model's
context (a 200k-character prompt would otherwise try to allocate tens of GB in prefill), one longer than
`--max_prompt_tokens`, or one whose prompt alone does not fit our pool's KV budget (`--engine.kv_budget_tokens`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqsched.engines.api import Engine, context_length
from seqsched.requests import Request

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
"""OpenAI's error code for a request longer than the model's context."""
PROMPT_TOO_LONG = "prompt_too_long"
KV_BUDGET_EXCEEDED = "kv_budget_exceeded"
"""The prompt alone does not fit the continuous pool's KV budget."""


@dataclass(frozen=True)
class Rejection:
    """Why a request is not served."""

    problem: str
    code: str
    prompt_tokens: int
    limit: int


def rejections(
    engine: Engine, requests: Sequence[Request], limit: int, max_prompt_tokens: int | None = None
) -> dict[int, Rejection]:
    """The requests (by index) that cannot be served: their prompt plus their own cap (max_tokens, at most limit)
    exceeds the engine's context, their prompt is longer than max_prompt_tokens, or (our pool with a KV budget) their
    prompt, its first token and the next do not fit the budget even alone."""
    context = context_length(engine)
    budget = getattr(engine, "kv_budget_tokens", None)
    if context is None and max_prompt_tokens is None and budget is None:
        return {}
    turned_away: dict[int, Rejection] = {}
    for index, request in enumerate(requests):
        prompt_tokens = len(engine.encode(request.chat()))
        cap = min(limit, request.max_tokens or limit)
        if max_prompt_tokens is not None and prompt_tokens > max_prompt_tokens:
            problem = f"the prompt has {prompt_tokens} tokens, more than --max_prompt_tokens {max_prompt_tokens}"
            turned_away[index] = Rejection(problem, PROMPT_TOO_LONG, prompt_tokens, cap)
        elif context is not None and prompt_tokens + cap > context:
            problem = (
                f"the prompt's {prompt_tokens} tokens plus up to {cap} generated exceed the model's context of "
                f"{context} tokens; shorten the prompt or lower its max_tokens"
            )
            turned_away[index] = Rejection(problem, CONTEXT_LENGTH_EXCEEDED, prompt_tokens, cap)
        elif budget is not None and prompt_tokens + 2 > budget:
            problem = (
                f"the prompt's {prompt_tokens} tokens do not fit the KV budget of {budget} tokens even alone "
                f"(--engine.kv_budget_tokens must be at least {prompt_tokens + 2} to serve it)"
            )
            turned_away[index] = Rejection(problem, KV_BUDGET_EXCEEDED, prompt_tokens, cap)
    return turned_away
