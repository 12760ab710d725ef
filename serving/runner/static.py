"""Static batches (the paper's engine): the scheduler's plan runs batch by batch, FCR recomputes the requests that
hit their batch's cap, and a batch that runs out of memory is split in two and retried (down to one request; a
request that runs out of memory alone is recorded as an error and the run goes on).

No torch here: an out-of-memory error is recognised by its type name or message, so a CUDA engine's
`torch.OutOfMemoryError` is handled like a CPU allocation failure.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from seqsched.engines.api import BatchOutput, Engine, FinishReason, RowOutput, SamplingParams
from serving.policy.scheduler import Batch, engine_steps, plan, recompute_plan
from serving.runner.base import RunState
from serving.runner.records import BatchRecord

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch.OutOfMemoryError (CUDA or otherwise), MemoryError, and RuntimeErrors that report running out
    of memory (CUDA's "out of memory", the CPU allocator's "can't allocate memory")."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    message = str(error).lower()
    return "out of memory" in message or "can't allocate memory" in message or "cannot allocate memory" in message


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


OUT_OF_MEMORY = "out_of_memory"


def _alone_failed(prompt_ids: Sequence[Sequence[int]]) -> BatchOutput:
    """A stand-in output for a request that could not be generated even alone (its row holds nothing)."""
    return BatchOutput(
        rows=[RowOutput([], "", FinishReason.LENGTH, 0)],
        prompt_tokens=len(prompt_ids[0]),
        padded_prompt_tokens=0,
        decode_steps=0,
        row_steps=0,
        prefill_s=0.0,
        decode_s=0.0,
    )


def generate_splitting(
    engine: Engine,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingParams,
    seeds: Sequence[int],
) -> tuple[BatchOutput, dict[int, str]]:
    """engine.generate, splitting the batch in two (recursively) when it runs out of memory.

    Returns the output and, by row, the requests that ran out of memory even alone (their rows are empty): one
    such request becomes an error line; it does not take the batch, or the run, down with it.
    """
    try:
        return engine.generate(prompt_ids, max_new_tokens, sampling, seeds=seeds), {}
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        _release_memory()
        if len(prompt_ids) == 1:
            problem = (
                f"out of memory generating this request alone ({len(prompt_ids[0])} prompt tokens, "
                f"max_new_tokens {max_new_tokens}); shorten it, lower its max_tokens, or use a larger device"
            )
            log.warning("%s", problem)
            return _alone_failed(prompt_ids), {0: problem}
        half = len(prompt_ids) // 2
        log.warning(
            "out of memory with a batch of %d; retrying as %d + %d", len(prompt_ids), half, len(prompt_ids) - half
        )
        first, first_failed = generate_splitting(engine, prompt_ids[:half], max_new_tokens, sampling, seeds[:half])
        second, second_failed = generate_splitting(engine, prompt_ids[half:], max_new_tokens, sampling, seeds[half:])
        failed = first_failed | {half + row: problem for row, problem in second_failed.items()}
        return _merge(first, second), failed


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
        output, out_of_memory = generate_splitting(
            self.engine, prompts, steps, sampling, [self.seed(index) for index in ids]
        )
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
        failed = []
        for position, (index, row) in enumerate(zip(ids, output.rows, strict=True)):
            if position in out_of_memory:
                self.fail(index, out_of_memory[position], OUT_OF_MEMORY, finished_at)
            elif not self.finish(index, row, budgets[index], batch.phase, finished_at):
                failed.append(index)
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
