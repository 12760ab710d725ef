"""Measure an engine's step cost (time per decode step vs batch size and context) and fit serving.simulate's
StepCost to it. Talks to the engine only through the Engine protocol; numpy is imported for the fit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from seqsched.engines.api import GREEDY, Engine
from serving.simulate import StepCost

log = logging.getLogger(__name__)

FILLER = (
    "The history of the city begins with a small market town on the river, where traders from the north met "
    "merchants from the south to exchange grain, wool, salt and news. Over the following centuries the town "
    "grew, its walls were rebuilt three times, and its cathedral, begun in stone and finished in brick, "
)
"""Text the measurement prompts are cut from: a continuation rarely ends at once, so batches run their steps."""


@dataclass(frozen=True)
class StepSample:
    """One timed batch."""

    batch: int
    prompt_tokens: int
    decode_steps: int
    prefill_s: float
    decode_s: float

    @property
    def step_s(self) -> float:
        """Seconds per decode forward (the first step samples from the prefill's logits)."""
        return self.decode_s / max(1, self.decode_steps - 1)

    @property
    def mean_context(self) -> float:
        """The context length in the middle of the decode."""
        return self.prompt_tokens + self.decode_steps / 2


def measure(
    engine: Engine,
    batch_sizes: Sequence[int] = (1, 4, 16, 32, 64),
    prompt_lengths: Sequence[int] = (32, 160),
    steps: int = 16,
    repeats: int = 1,
) -> list[StepSample]:
    """Time one batch per (batch size, prompt length), `repeats` times (plus one untimed warm-up)."""
    text_ids = engine.encode(FILLER * 8)
    samples = []
    engine.generate([text_ids[:8]], 2, GREEDY)  # warm-up: first calls allocate
    for prompt_tokens in prompt_lengths:
        if prompt_tokens > len(text_ids):
            raise ValueError(f"prompt length {prompt_tokens} is longer than the filler text ({len(text_ids)} tokens)")
        for batch in batch_sizes:
            # Rows start at different offsets so they do not all decode the same continuation.
            prompts = [text_ids[row % 7 : row % 7 + prompt_tokens] for row in range(batch)]
            for _ in range(repeats):
                output = engine.generate(prompts, steps, GREEDY)
                sample = StepSample(batch, prompt_tokens, output.decode_steps, output.prefill_s, output.decode_s)
                log.info("batch %d prompt %d: %.1f ms/step", batch, prompt_tokens, sample.step_s * 1000)
                samples.append(sample)
    return samples


def fit(samples: Sequence[StepSample]) -> StepCost:
    """Least-squares StepCost over the samples (negative coefficients, which noise can produce, become 0)."""
    import numpy as np

    decode = [sample for sample in samples if sample.decode_steps > 1]
    if len(decode) < 3:
        raise ValueError("need at least 3 samples with more than one decode step to fit a step cost")
    design = np.array([[1.0, s.batch, s.batch * s.mean_context] for s in decode])
    target = np.array([s.step_s for s in decode])
    fixed, per_row, per_context = np.clip(np.linalg.lstsq(design, target, rcond=None)[0], 0.0, None)
    prefill_design = np.array([[1.0, s.batch * s.prompt_tokens] for s in samples])
    prefill_target = np.array([s.prefill_s for s in samples])
    prefill_fixed, prefill_token = np.clip(np.linalg.lstsq(prefill_design, prefill_target, rcond=None)[0], 0.0, None)
    return StepCost(
        fixed_s=float(fixed),
        per_row_s=float(per_row),
        per_context_s=float(per_context),
        prefill_fixed_s=float(prefill_fixed),
        prefill_token_s=float(prefill_token),
    )


def report(samples: Sequence[StepSample], cost: StepCost) -> list[dict[str, float | int]]:
    """Measured vs fitted step time per sample (how well the linear model holds)."""
    return [
        {
            "batch": sample.batch,
            "prompt_tokens": sample.prompt_tokens,
            "decode_steps": sample.decode_steps,
            "measured_step_ms": round(sample.step_s * 1000, 2),
            "fitted_step_ms": round(cost.step_s(sample.batch, sample.mean_context) * 1000, 2),
            "prefill_s": round(sample.prefill_s, 3),
        }
        for sample in samples
    ]


__all__ = ["StepSample", "fit", "measure", "report"]
