"""What every generation engine takes and returns (no torch): the contract the runner and sampler use."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = Mapping[str, str]
"""One chat message: {"role": ..., "content": ...}."""


class Batching(enum.Enum):
    """How an engine takes work: a static batch at a time, or a whole set it schedules itself."""

    STATIC = "static"
    """`generate(batch)` runs one batch until every row stops; the runner plans the batches."""
    CONTINUOUS = "continuous"
    """`submit(requests, caps, priorities)` admits requests into running slots step by step."""


class FinishReason(enum.Enum):
    """Why a row stopped: a stop token (EOS) or the batch's max_new_tokens cap."""

    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings shared by the rows of a batch; temperature 0 is greedy."""

    temperature: float = 0.0
    """0 for greedy decoding; above 0, sample from the softmax at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax."""
        return self.temperature == 0.0


GREEDY = SamplingParams()


@dataclass
class RowOutput:
    """One row of a generated batch."""

    token_ids: list[int]
    """Generated token ids, the stop token excluded."""
    text: str
    finish_reason: FinishReason
    finish_step: int
    """Decode step (1-based) at which the row finished; equals num_tokens + 1 for a stop, num_tokens at the cap."""
    error: str | None = None
    """Why the engine could not serve the request (vLLM aborted or refused it): an error line, not an FCR failure."""
    error_code: str | None = None
    """The error's code in an OpenAI error line (e.g. invalid_request, engine_error)."""

    @property
    def num_tokens(self) -> int:
        """Number of generated tokens kept in the output."""
        return len(self.token_ids)


@dataclass
class BatchOutput:
    """A generated batch: its rows in input order and what computing them cost."""

    rows: list[RowOutput]
    prompt_tokens: int
    """Real (unpadded) prompt tokens over the rows."""
    padded_prompt_tokens: int
    """Prompt positions computed in prefill, padding included (rows x longest prompt)."""
    decode_steps: int
    """Token positions generated: the longest row's tokens (plus its stop token)."""
    row_steps: int
    """Rows x steps actually computed, finished rows and padding included (fewer with row eviction)."""
    prefill_s: float
    decode_s: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        """Prefill plus decode time."""
        return self.prefill_s + self.decode_s

    @property
    def generated_tokens(self) -> int:
        """Tokens that end up in the outputs."""
        return sum(row.num_tokens for row in self.rows)


@dataclass
class SubmitStats:
    """What a continuous engine's latest submit() computed, for the run's time breakdown."""

    steps: int = 0
    """Decode forwards over the pool."""
    row_steps: int = 0
    """Rows x decode forwards (each row's first token comes from its prefill, as in a static batch), rows that
    finished but were still in the cache included."""
    retired_row_steps: int = 0
    """The part of row_steps spent on rows that had finished (an engine that removes rows in groups computes them
    until the next removal)."""
    prefills: int = 0
    """Admissions: batched prefills of newcomers."""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    forward_s: float = 0.0
    """Seconds inside the model's forward calls; prefill_s + decode_s - forward_s is the engine's own work
    (sampling, finishing rows, joining and compacting the cache); 0 when the engine does not say."""
    context_tokens: int = 0
    """Sum over decode forwards of the rows' real context (prompt + generated)."""
    padded_context_tokens: int = 0
    """The same with the alignment padding the engine computes (0 when it computes none)."""
    max_rows: int = 0
    """The most rows decoded at once."""
    preemptions: int = 0
    """Running requests sent back to wait because the KV cache was full (their work recomputed later)."""
    recomputed_tokens: int = 0
    """Tokens whose KV those preemptions threw away (computed again when the request resumes)."""


@dataclass
class TimedRow:
    """A request's output from a continuous engine and when it finished, seconds after the set was submitted."""

    row: RowOutput
    finished_s: float


def encode_chat(tokenizer: Any, prompt: str | Sequence[Message], system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt (a user message or a whole chat) with the tokenizer's chat template applied."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt is not None and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if tokenizer.chat_template is None:
        text = "\n".join(message["content"] for message in messages) + "\n"
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def model_stop_token_ids(*sources: Any) -> set[int]:
    """EOS ids declared by a generation config and/or a tokenizer (an int or a list each)."""
    ids: set[int] = set()
    for source in sources:
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(token) for token in eos)
    return ids


def context_length(engine: Any) -> int | None:
    """The most tokens (prompt plus generated) the engine's model takes, when the engine says (its optional
    `context_length` attribute); None when unknown."""
    value = getattr(engine, "context_length", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def takes_reservations(engine: Any) -> bool:
    """True when the engine admits by KV reservations (seqsched's vLLM scheduler class, our pool with a KV budget:
    its optional `takes_reservations` attribute): reserve-max and predicted admission can run on it; otherwise only
    the order is ours to choose."""
    return bool(getattr(engine, "takes_reservations", False))


class Engine(Protocol):
    """Batched generation: prompts in, token ids and costs out. Every engine can run a static batch
    (`generate`, what the label sampler and the step-cost probe use); `batching` says how it serves a run.
    An engine may also say how long a sequence its model takes (`context_length`, see context_length())."""

    batching: Batching

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt with the chat template applied (generation prompt added)."""
        ...

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """Generate one batch; every row stops at a stop token or after max_new_tokens."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens dropped."""
        ...


class ContinuousEngine(Engine, Protocol):
    """An engine that takes a whole set of requests with per-request caps and priorities and schedules them."""

    last_stats: SubmitStats | None
    """What the latest submit() computed (None before the first)."""

    def submit(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        priorities: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
        on_finished: Callable[[int, TimedRow], None] | None = None,
    ) -> list[TimedRow]:
        """Serve every request (lower priority value first); outputs in input order with finish times.
        on_finished(index, row) is called as each request finishes (to checkpoint it, say)."""
        ...
