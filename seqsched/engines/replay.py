"""Length replay: every request generates exactly its recorded response length, EOS ignored (what vLLM's
throughput benchmark does with ignore_eos and dataset lengths).

Over a random-weight model of the served architecture (`--model.random_init`), this reproduces a serving run's
compute without the weights: the same prompts (token counts), the same batches, the same decode steps, the same
FCR failures and recomputes as the real model would cause; the text is noise. A row finishes as a STOP at step
length + 1, as if the model had emitted its stop token there, so the runner's FCR logic is the one real runs use.

The engine does not see request ids, only prompts: lengths are registered per chat (the messages the runner
encodes) when the engine is built for a set of requests, then found again by the prompt's token ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from seqsched.engines.api import GREEDY, Batching, BatchOutput, Message, SamplingParams
from seqsched.engines.hf import HFEngine
from seqsched.errors import SeqschedError
from seqsched.random_models import REPLAY_NOTE
from seqsched.requests import Request

log = logging.getLogger(__name__)

__all__ = ["REPLAY_NOTE", "ReplayEngine", "chat_key", "lengths_by_chat"]


def chat_key(prompt: str | Sequence[Message]) -> str:
    """One string per distinct chat (a bare prompt is a one-message user chat, as Request.chat() spells it)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def lengths_by_chat(requests: Sequence[Request], lengths: Mapping[str, int], source: str) -> dict[str, int]:
    """Each request's chat -> its recorded length; every request must have one. Requests sharing a chat share
    the first one's length (a greedy model answers the same chat the same way)."""
    missing = [request.id for request in requests if request.id not in lengths]
    if missing:
        shown = ", ".join(repr(value) for value in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SeqschedError(
            f"--engine.replay {source}: no length for {len(missing)} of {len(requests)} request ids ({shown})"
        )
    by_chat: dict[str, int] = {}
    clashes = 0
    for request in requests:
        key = chat_key(request.chat())
        if key in by_chat and by_chat[key] != lengths[request.id]:
            clashes += 1
        by_chat.setdefault(key, lengths[request.id])
    if clashes:
        log.warning("replay: %d requests repeat an earlier chat with another length; the first one's is used", clashes)
    return by_chat


class ReplayEngine:
    """An HFEngine (usually over a random-weight model) whose rows generate their recorded lengths.

    Prompts it has no length for (the step-cost probe's filler text) run to the batch's max_new_tokens, stop
    tokens ignored. Token ids the tokenizer has beyond the model's vocabulary are folded into it (a stand-in
    tokenizer may be larger than the architecture's vocabulary; only the count of prompt tokens matters).
    """

    batching = Batching.STATIC
    text_faithful = False
    """Outputs' text is noise: the bench compares lengths, not text, with vanilla's."""

    def __init__(self, inner: HFEngine, by_chat: Mapping[str, int], source: str = "") -> None:
        self.inner = inner
        self.by_chat = dict(by_chat)
        self.source = source
        self.vocab_size = int(inner.model.get_input_embeddings().num_embeddings)
        inner.pad_token_id %= self.vocab_size
        self._by_ids: dict[tuple[int, ...], int] = {}

    @classmethod
    def for_requests(
        cls, inner: HFEngine, requests: Sequence[Request], lengths: Mapping[str, int], source: str = ""
    ) -> ReplayEngine:
        """Replay `lengths` (by request id) for these requests."""
        return cls(inner, lengths_by_chat(requests, lengths, source), source)

    @property
    def model(self) -> Any:
        """The model that computes every step."""
        return self.inner.model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that gives prompts their token counts."""
        return self.inner.tokenizer

    @property
    def context_length(self) -> int | None:
        """The architecture's context window (prompt checks turn away what would not fit)."""
        return self.inner.context_length

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt (folded into the model's vocabulary); registers its length when it has one."""
        ids = [token % self.vocab_size for token in self.inner.encode(prompt)]
        length = self.by_chat.get(chat_key(prompt))
        if length is not None:
            self._by_ids[tuple(ids)] = length
        return ids

    def recorded_lengths(self, requests: Sequence[Request]) -> list[int]:
        """The length each request will generate (an error for a request without one)."""
        missing = [request.id for request in requests if chat_key(request.chat()) not in self.by_chat]
        if missing:
            raise SeqschedError(f"--engine.replay {self.source}: no length for requests {missing[:5]}")
        return [self.by_chat[chat_key(request.chat())] for request in requests]

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of token ids (noise: the weights are random)."""
        return self.inner.decode(token_ids)

    def remaining(self, prompt_ids: Sequence[int]) -> int | None:
        """Tokens a prompt still generates: its length, or less the tokens a continued attempt already kept
        (a registered prompt followed by generated tokens); None when no registered prompt starts it."""
        key = tuple(prompt_ids)
        if key in self._by_ids:
            return self._by_ids[key]
        for cut in range(len(key) - 1, 0, -1):  # FCR's continue mode feeds prompt + kept prefix
            length = self._by_ids.get(key[:cut])
            if length is not None:
                return max(0, length - (len(key) - cut))
        return None

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """One static batch; each row stops after its recorded length (or at max_new_tokens)."""
        forced = [self.remaining(ids) for ids in prompt_ids]
        return self.inner.generate(prompt_ids, max_new_tokens, sampling, seeds, forced_lengths=forced)
