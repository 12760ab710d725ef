"""Perception in advance: ask the served LLM itself how long its answer will be (zero-shot or LoRA-tuned)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lengthpred.predictor import length_query, parse_length
from seqsched.engines.api import GREEDY, Engine
from seqsched.errors import require_at_least


@dataclass(frozen=True)
class PerceptionConfig:
    """How the length query is asked and answered."""

    batch_size: int = 32
    max_new_tokens: int = 8
    """The answer is one number: a few tokens suffice."""
    fallback: int = 256
    """The prediction when the answer holds no number (counted in `unparsed`)."""
    max_length: int = 4096
    """Answers above this are clipped to it."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "max_new_tokens", "max_length")
        require_at_least(self, 0, "fallback")


@dataclass
class PerceptionPredictor:
    """A LengthPredictor that asks an engine's model the paper's length query (greedy, a few tokens)."""

    engine: Engine
    config: PerceptionConfig = field(default_factory=PerceptionConfig)
    unparsed: int = 0
    """How many answers held no number so far (each got the fallback)."""

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length per prompt, in order."""
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        predictions = [0] * len(prompts)
        for start in range(0, len(order), self.config.batch_size):
            chunk = order[start : start + self.config.batch_size]
            prompt_ids = [self.engine.encode(length_query(prompts[index])) for index in chunk]
            output = self.engine.generate(prompt_ids, self.config.max_new_tokens, GREEDY)
            for index, row in zip(chunk, output.rows, strict=True):
                value = parse_length(row.text)
                if value is None:
                    self.unparsed += 1
                    value = self.config.fallback
                predictions[index] = min(value, self.config.max_length)
        return predictions
