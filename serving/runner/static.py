"""Static batches (the paper's engine): the scheduler's plan runs batch by batch, FCR recomputes the requests that
hit their batch's cap, and a batch that runs out of memory is split in two and retried (down to one request).

No torch here: an out-of-memory error is recognised by its type name or message, so a CUDA engine's
`torch.OutOfMemoryError` is handled like a CPU allocation failure.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from seqsched.engines.api import BatchOutput, Engine, SamplingParams
from seqsched.errors import SeqschedError
from serving.runner.base import RunState
from serving.runner.records import BatchRecord
from serving.scheduler import Batch, engine_steps, plan, recompute_plan

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch.OutOfMemoryError (CUDA or otherwise) and RuntimeErrors that report running out of memory."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def _release_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _merge(first: BatchOutput, second: BatchOutput) -> BatchOutput:
    """Two halves of a split batch as one output (times add up: they ran one after the other)."""
    return BatchOutput(
        rows=[*first.rows, *second.rows],
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        padded_prompt_tokens=first.padded_prompt_tokens + second.padded_prompt_tokens,
        decode_steps=max(first.decode_steps, second.decode_steps),
        row_steps=first.row_steps + second.row_steps,
        prefill_s=first.prefill_s + second.prefill_s,
        decode_s=first.decode_s + second.decode_s,
        extra={"oom_splits": first.extra.get("oom_splits", 0) + second.extra.get("oom_splits", 0) + 1},
    )


def generate_splitting(
    engine: Engine,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingParams,
    seeds: Sequence[int],
) -> BatchOutput:
    """engine.generate, splitting the batch in two (recursively) when it runs out of memory."""
    try:
        return engine.generate(prompt_ids, max_new_tokens, sampling, seeds=seeds)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        _release_memory()
        if len(prompt_ids) == 1:
            raise SeqschedError(
                f"out of memory generating a single request ({len(prompt_ids[0])} prompt tokens, "
                f"max_new_tokens {max_new_tokens}); lower --limit or use a larger device"
            ) from error
        half = len(prompt_ids) // 2
        log.warning(
            "out of memory with a batch of %d; retrying as %d + %d", len(prompt_ids), half, len(prompt_ids) - half
        )
        first = generate_splitting(engine, prompt_ids[:half], max_new_tokens, sampling, seeds[:half])
        second = generate_splitting(engine, prompt_ids[half:], max_new_tokens, sampling, seeds[half:])
        return _merge(first, second)


class StaticRun(RunState):
    """A run on a static-batch engine: planned batches, then the recompute batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_cap: dict[int, int] = {}
        """The cap of the batch each request last ran in (the recompute pass groups failures by it)."""

    def execute(self, batch: Batch, members: Sequence[int], sampling: SamplingParams) -> list[int]:
        """Run one batch (batch ids index `members`); return the requests that need another pass."""
        ids = [members[local] for local in batch.request_ids]
        for index in ids:
            self.failed_cap[index] = batch.max_new_tokens
        budgets = {index: self.budget(index) for index in ids}
        steps = engine_steps(batch.max_new_tokens, budgets.values())
        prompts = [self.prompt(index) for index in ids]
        output = generate_splitting(self.engine, prompts, steps, sampling, [self.seed(index) for index in ids])
        self.batches.append(
            BatchRecord(
                phase=batch.phase,
                request_ids=tuple(ids),
                max_new_tokens=batch.max_new_tokens,
                engine_steps=steps,
                decode_steps=output.decode_steps,
                row_steps=output.row_steps,
                prompt_tokens=output.prompt_tokens,
                padded_prompt_tokens=output.padded_prompt_tokens,
                prefill_s=output.prefill_s,
                decode_s=output.decode_s,
                oom_splits=int(output.extra.get("oom_splits", 0)),
            )
        )
        finished_at = self.elapsed()
        failed = [
            index
            for index, row in zip(ids, output.rows, strict=True)
            if not self.finish(index, row, budgets[index], batch.phase, finished_at)
        ]
        self.on_progress(len(ids) - len(failed))
        return failed

    def serve_group(self, sampling: SamplingParams, members: list[int]) -> None:
        """The plan's batches, then the failures grouped by what they may still generate."""
        predicted = [self.predicted[index] for index in members] if self.predicted is not None else [0] * len(members)
        prompts = [len(self.prompt(index)) for index in members]
        failed: list[int] = []
        for batch in plan(predicted, self.cfg, [self.limits[index] for index in members], prompts):
            failed.extend(self.execute(batch, members, sampling))
        if not failed:
            return
        # recompute_plan works on indices into `failed`; map back through it.
        budgets = {local: self.budget(index) for local, index in enumerate(failed)}
        caps = {local: self.failed_cap[index] for local, index in enumerate(failed)}
        guesses = [self.predicted[index] if self.predicted is not None else 0 for index in failed]
        fed = [len(self.prompt(index)) for index in failed]
        second = recompute_plan(
            list(range(len(failed))), self.cfg, budgets, failed_caps=caps, predicted=guesses, prompts=fed
        )
        for batch in second:
            left = self.execute(batch, failed, sampling)
            assert not left, "recompute batches cover every budget"
