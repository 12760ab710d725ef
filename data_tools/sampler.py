"""Sample responses per instruction at several temperatures and record their lengths, fast and resumable.

Speed comes from batching and from grouping: the greedy pass runs first, in batches of similar prompt
length; the sampled runs of each temperature are then batched by the instruction's greedy length, so the
rows of a batch tend to finish together (the label builder eats its own dog food). On a continuous-batching
engine every generation of one temperature is submitted at once instead: finished rows' slots are refilled at
the next step, the longest expected generations go first (so the pool does not drain behind a few long ones at
the end), and each generation is checkpointed as it finishes. Every generation has its own seed, derived from
(seed, instruction id, temperature, sample index), so a resumed run draws the same samples as an uninterrupted
one, whichever engine draws them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data_tools.checkpoint import Checkpoint, Sample
from data_tools.labels import bucket_up, max_length
from data_tools.schema import LengthRecord
from seqsched.engines.api import Batching, ContinuousEngine, Engine, FinishReason, RowOutput, SamplingParams, TimedRow
from seqsched.errors import SeqschedError
from seqsched.requests import Request


@dataclass(frozen=True)
class SamplerConfig:
    """What to generate per instruction."""

    temperatures: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)
    samples_per_temperature: int = 1
    """Samples at each temperature above 0 (greedy decoding is deterministic: one sample at 0.0)."""
    max_new_tokens: int = 512
    batch_size: int = 64
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperatures:
            raise ValueError("give at least one temperature")
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ValueError(f"temperatures must be distinct, got {list(self.temperatures)}")
        if any(temperature < 0 for temperature in self.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {list(self.temperatures)}")
        for name in ("samples_per_temperature", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        SamplingParams(top_p=self.top_p)  # validates top_p

    def sample_slots(self) -> list[tuple[float, int]]:
        """(temperature, sample index) of every generation of one instruction, in record order."""
        return [
            (temperature, index)
            for temperature in self.temperatures
            for index in range(1 if temperature == 0.0 else self.samples_per_temperature)
        ]


def sample_seed(seed: int, request_id: str, temperature: float, index: int) -> int:
    """The generation's own seed: stable across runs, batches and processes (63 bits)."""
    digest = hashlib.sha256(f"{seed}\x00{request_id}\x00{temperature!r}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Job:
    """One generation to run: which instruction, at which temperature, which sample."""

    request: int
    """Index into the run's requests."""
    temperature: float
    index: int


def plan_batches(
    jobs: Sequence[Job],
    prompt_lengths: Sequence[int],
    batch_size: int,
    greedy_lengths: dict[int, int] | None = None,
) -> list[list[Job]]:
    """Batches of one temperature each, rows grouped by greedy length (when known), then prompt length."""
    greedy_lengths = greedy_lengths or {}
    batches: list[list[Job]] = []
    for temperature in dict.fromkeys(job.temperature for job in jobs):
        group = sorted(
            (job for job in jobs if job.temperature == temperature),
            key=lambda job: (greedy_lengths.get(job.request, -1), prompt_lengths[job.request], job.request, job.index),
        )
        batches.extend(group[start : start + batch_size] for start in range(0, len(group), batch_size))
    return batches


@dataclass
class SamplingRun:
    """Every sample of the run's instructions (resumed ones included) and what this process computed."""

    samples: dict[tuple[str, float, int], Sample]
    generations: int = 0
    generated_tokens: int = 0
    row_steps: int = 0
    batches: int = 0
    wall_s: float = 0.0
    resumed: int = 0
    """Samples found in the checkpoint (not generated again)."""

    def metrics(self) -> dict[str, float]:
        """Throughput of what this process generated."""
        return {
            "generations": self.generations,
            "resumed_generations": self.resumed,
            "batches": self.batches,
            "generated_tokens": self.generated_tokens,
            "wall_s": self.wall_s,
            "tokens_per_s": self.generated_tokens / self.wall_s if self.wall_s else 0.0,
            "generations_per_s": self.generations / self.wall_s if self.wall_s else 0.0,
            "effective_token_ratio": self.generated_tokens / self.row_steps if self.row_steps else 0.0,
        }


@dataclass
class LengthSampler:
    """Runs the generations of a label run through an engine, batch by batch, into a checkpoint."""

    engine: Engine
    config: SamplerConfig = field(default_factory=SamplerConfig)
    checkpoint: Checkpoint | None = None
    progress: bool = True
    on_batch: Callable[[int], None] | None = None
    """Called with the number of finished batches after each one (tests use it)."""
    done: dict[tuple[str, float, int], Sample] = field(default_factory=dict)
    """Samples finished elsewhere (other processes' checkpoints of a data-parallel run): not generated again."""

    def run(self, requests: Sequence[Request]) -> SamplingRun:
        """Generate every sample of requests that the checkpoint does not hold yet."""
        from tqdm import tqdm

        slots = self.config.sample_slots()
        done: dict[tuple[str, float, int], Sample] = dict(self.done)
        if self.checkpoint is not None:
            done.update(self.checkpoint.samples)
        jobs = [
            Job(position, temperature, index)
            for position, request in enumerate(requests)
            for temperature, index in slots
            if (request.id, temperature, index) not in done
        ]
        run = SamplingRun(samples={}, resumed=len(requests) * len(slots) - len(jobs))
        for request in requests:
            for temperature, index in slots:
                if (request.id, temperature, index) in done:
                    run.samples[(request.id, temperature, index)] = done[(request.id, temperature, index)]
        if not jobs:
            return run
        pending = sorted({job.request for job in jobs})
        prompt_ids = {position: self.engine.encode(requests[position].chat()) for position in pending}
        prompt_lengths = {position: len(ids) for position, ids in prompt_ids.items()}

        started = time.perf_counter()
        bar = tqdm(total=len(jobs), unit="gen", desc="label", disable=not self.progress, smoothing=0.1)
        greedy_jobs = [job for job in jobs if job.temperature == 0.0]
        sampled_jobs = [job for job in jobs if job.temperature != 0.0]
        continuous = self.engine.batching is Batching.CONTINUOUS
        # On a continuous engine each temperature is one submission (a single "batch" of the plan).
        size = max(1, len(jobs)) if continuous else self.config.batch_size
        run_group = self._run_pool if continuous else self._run_batch
        for batch in plan_batches(greedy_jobs, prompt_lengths, size):
            run_group(batch, requests, prompt_ids, run, bar, started)
        greedy_lengths = {
            position: run.samples[(request.id, 0.0, 0)].length
            for position, request in enumerate(requests)
            if (request.id, 0.0, 0) in run.samples
        }
        for batch in plan_batches(sampled_jobs, prompt_lengths, size, greedy_lengths):
            if continuous:  # longest expected first: the pool's tail then drains short generations
                batch = batch[::-1]
            run_group(batch, requests, prompt_ids, run, bar, started)
        bar.close()
        run.wall_s = time.perf_counter() - started
        return run

    def _sample(self, job: Job, requests: Sequence[Request], row: RowOutput) -> Sample:
        return Sample(
            id=requests[job.request].id,
            temperature=job.temperature,
            index=job.index,
            length=row.num_tokens,
            hit_limit=row.finish_reason is FinishReason.LENGTH,
            text=row.text,
        )

    def _run_pool(
        self,
        jobs: list[Job],
        requests: Sequence[Request],
        prompt_ids: dict[int, list[int]],
        run: SamplingRun,
        bar: object,
        started: float,
    ) -> None:
        """Jobs of one temperature through a continuous engine, in the given order; each checkpointed as it ends."""
        engine: ContinuousEngine = self.engine  # type: ignore[assignment]
        temperature = jobs[0].temperature
        sampling = SamplingParams(temperature=temperature, top_p=self.config.top_p)
        seeds = [sample_seed(self.config.seed, requests[job.request].id, temperature, job.index) for job in jobs]

        refused: list[str] = []

        def finished(position: int, timed: TimedRow) -> None:
            if timed.row.error is not None:  # the engine refused it: no length to record
                refused.append(f"instruction {requests[jobs[position].request].id}: {timed.row.error}")
                return
            sample = self._sample(jobs[position], requests, timed.row)
            if self.checkpoint is not None:
                self.checkpoint.append([sample])
            run.samples[sample.key] = sample
            run.generations += 1
            run.generated_tokens += timed.row.num_tokens
            run.row_steps += timed.row.finish_step
            self._report(run, bar, started, 1)

        engine.submit(
            [prompt_ids[job.request] for job in jobs],
            [self.config.max_new_tokens] * len(jobs),
            list(range(len(jobs))),
            sampling,
            seeds=None if sampling.greedy else seeds,
            on_finished=finished,
        )
        run.batches += 1
        if self.on_batch is not None:
            self.on_batch(run.batches)
        if refused:
            raise SeqschedError(
                f"{len(refused)} generations could not be sampled ({refused[0]}); the {run.generations} that finished "
                "are checkpointed: drop or shorten those instructions and run the same command again"
            )

    def _report(self, run: SamplingRun, bar: object, started: float, count: int) -> None:
        elapsed = time.perf_counter() - started
        instructions = run.generations / len(self.config.sample_slots())
        bar.update(count)  # type: ignore[attr-defined]
        bar.set_postfix(inst_s=f"{instructions / elapsed:.2f}", tok_s=f"{run.generated_tokens / elapsed:.0f}")  # type: ignore[attr-defined]

    def _run_batch(
        self,
        batch: list[Job],
        requests: Sequence[Request],
        prompt_ids: dict[int, list[int]],
        run: SamplingRun,
        bar: object,
        started: float,
    ) -> None:
        temperature = batch[0].temperature
        sampling = SamplingParams(temperature=temperature, top_p=self.config.top_p)
        seeds = [sample_seed(self.config.seed, requests[job.request].id, temperature, job.index) for job in batch]
        output = self.engine.generate(
            [prompt_ids[job.request] for job in batch],
            self.config.max_new_tokens,
            sampling,
            seeds=None if sampling.greedy else seeds,
        )
        samples = [self._sample(job, requests, row) for job, row in zip(batch, output.rows, strict=True)]
        if self.checkpoint is not None:
            self.checkpoint.append(samples)
        for sample in samples:
            run.samples[sample.key] = sample
        run.generations += len(samples)
        run.generated_tokens += output.generated_tokens
        run.row_steps += output.row_steps
        run.batches += 1
        self._report(run, bar, started, len(samples))
        if self.on_batch is not None:
            self.on_batch(run.batches)


def build_record(
    request: Request,
    samples: dict[tuple[str, float, int], Sample],
    config: SamplerConfig,
    model: str,
    bucket: int,
    keep_responses: bool,
    reference_length: int | None = None,
) -> LengthRecord:
    """The length record of one instruction from its samples (all of them must be there)."""
    mine = [samples[(request.id, temperature, index)] for temperature, index in config.sample_slots()]
    lengths = [sample.length for sample in mine]
    longest = max_length(lengths)
    greedy = next((sample.length for sample in mine if sample.temperature == 0.0), None)
    return LengthRecord(
        id=request.id,
        prompt=request.prompt,
        lengths=lengths,
        temperatures=[sample.temperature for sample in mine],
        max_length=longest,
        label=bucket_up(longest, bucket),
        hit_limit=any(sample.hit_limit for sample in mine),
        model=model,
        greedy_length=greedy,
        reference_length=reference_length,
        responses=[sample.text for sample in mine] if keep_responses else None,
    )
