"""Apply a schedule on an engine: planned batches, failure collection, recompute, outputs in input order, metrics.

No torch here: the runner talks to any `Engine` (serving.engine_api); an out-of-memory error is recognised by
its type name or message, so a CUDA engine's `torch.OutOfMemoryError` splits the batch in two and retries.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data_tools.io import Request
from serving.engine_api import BatchOutput, Engine, FinishReason, RowOutput, SamplingParams
from serving.errors import SeqschedError
from serving.scheduler import Batch, Phase, RecomputeMode, ScheduleConfig, plan, recompute_plan
from serving.simulate import engine_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Decoding settings for requests that do not set their own, and how the run reports."""

    temperature: float = 0.0
    """Default temperature (a request's own `temperature` wins); 0 is greedy."""
    top_p: float = 1.0
    seed: int = 0
    """Request i samples with seed + i, so its output does not depend on which batch it lands in."""
    progress: bool = False
    """Show a tqdm progress bar."""


@dataclass
class RequestRecord:
    """What happened to one request."""

    id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    limit: int
    """The request's own cap: the global limit, lowered by its max_tokens."""
    predicted: int | None
    recomputed: bool = False
    """True when its first batch's cap cut it short and it went through the recompute pass."""
    attempt_tokens: int = 0
    """Tokens its cut-short first attempt generated."""
    completion_s: float = 0.0
    """Seconds from the start of the run (predictor included) until its final batch ended."""

    @property
    def num_tokens(self) -> int:
        """Generated tokens in the final output."""
        return len(self.token_ids)


@dataclass
class BatchRecord:
    """One engine call as it ran."""

    phase: Phase
    request_ids: tuple[int, ...]
    max_new_tokens: int
    """The plan's cap."""
    engine_steps: int
    """The max_new_tokens given to the engine (one more than the cap when a row may go on, see simulate)."""
    decode_steps: int
    row_steps: int
    prompt_tokens: int
    padded_prompt_tokens: int
    prefill_s: float
    decode_s: float
    oom_splits: int = 0


@dataclass
class RunMetrics:
    """A run's throughput, waste and latency."""

    strategy: str
    requests: int
    batches: int
    total_s: float
    """Predictor plus generation wall time."""
    generation_s: float
    predictor_s: float
    predictor_share: float
    samples_per_s: float
    tokens_per_s: float
    """Generated (output) tokens per second of total time."""
    generated_tokens: int
    row_steps: int
    """Rows x decode steps computed: failed attempts, finished rows and recompute included."""
    effective_token_ratio: float
    """generated_tokens / row_steps."""
    failed: int
    failure_ratio: float
    recomputed_tokens: int
    """Tokens of failed attempts that were thrown away and generated again (0 when continuing)."""
    recompute_row_steps: int
    recompute_share: float
    """Share of row_steps spent in the recompute pass."""
    latency_p50_s: float
    latency_p99_s: float
    prefill_s: float
    decode_s: float
    oom_splits: int

    def row(self) -> dict[str, float | int | str]:
        """The metrics as a flat dict (a table row, JSON)."""
        return dict(self.__dict__)


@dataclass
class RunResult:
    """Per-request records in input order, the batches as run, and the metrics."""

    records: list[RequestRecord]
    batches: list[BatchRecord]
    metrics: RunMetrics
    config: ScheduleConfig
    extra: dict[str, object] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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


@dataclass
class _Pending:
    """A request's state during the run."""

    prompt_ids: list[int]
    prefix: list[int] = field(default_factory=list)
    """Tokens kept from a cut-short attempt (continue mode)."""


class _Run:
    """One run's mutable state; `run()` is the public entry."""

    def __init__(
        self,
        engine: Engine,
        requests: Sequence[Request],
        predicted: Sequence[int] | None,
        cfg: ScheduleConfig,
        options: RunOptions,
        predictor_s: float,
        on_progress: Callable[[int], None],
    ) -> None:
        self.engine = engine
        self.requests = requests
        self.cfg = cfg
        self.options = options
        self.predictor_s = predictor_s
        self.on_progress = on_progress
        self.predicted = list(predicted) if predicted is not None else None
        self.limits = [min(cfg.limit, request.max_tokens or cfg.limit) for request in requests]
        self.records: list[RequestRecord | None] = [None] * len(requests)
        self.batches: list[BatchRecord] = []
        self.pending: dict[int, _Pending] = {}
        self.started = time.perf_counter()

    def sampling_groups(self) -> list[tuple[SamplingParams, list[int]]]:
        """Requests grouped by their decoding settings (a batch shares one), in order of first appearance."""
        groups: dict[SamplingParams, list[int]] = {}
        for index, request in enumerate(self.requests):
            temperature = self.options.temperature if request.temperature is None else request.temperature
            params = SamplingParams(temperature=temperature, top_p=self.options.top_p)
            groups.setdefault(params, []).append(index)
        return list(groups.items())

    def execute(self, batch: Batch, members: Sequence[int], sampling: SamplingParams) -> list[int]:
        """Run one batch (batch ids index `members`); return the requests that need another pass."""
        ids = [members[local] for local in batch.request_ids]
        limits = {index: self.limits[index] - len(self.state(index).prefix) for index in ids}
        steps = engine_steps(batch.max_new_tokens, limits.values())
        prompts = [self.state(index).prompt_ids + self.state(index).prefix for index in ids]
        seeds = [self.options.seed + index for index in ids]
        output = generate_splitting(self.engine, prompts, steps, sampling, seeds)
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
        finished_at = time.perf_counter() - self.started + self.predictor_s
        failed = []
        for index, row in zip(ids, output.rows, strict=True):
            if self.finish(index, row, limits[index], batch.phase, finished_at):
                continue
            failed.append(index)
        self.on_progress(len(ids) - len(failed))
        return failed

    def state(self, index: int) -> _Pending:
        if index not in self.pending:
            self.pending[index] = _Pending(self.engine.encode(self.requests[index].chat()))
        return self.pending[index]

    def finish(self, index: int, row: RowOutput, budget: int, phase: Phase, finished_at: float) -> bool:
        """Record a row's result; False when it was cut short by its batch's cap and must go again."""
        state = self.state(index)
        tokens, reason = row.token_ids, row.finish_reason
        if len(tokens) > budget:  # the batch ran past this request's own max_tokens
            tokens, reason = tokens[:budget], FinishReason.LENGTH
        elif reason is FinishReason.LENGTH and len(tokens) < budget:
            if phase is Phase.RECOMPUTE:  # pragma: no cover - recompute caps cover every budget
                raise AssertionError(f"request {index} was cut short in the recompute pass")
            record = self.record(index, [], FinishReason.LENGTH, finished_at)
            record.recomputed, record.attempt_tokens = True, len(tokens)
            if self.cfg.recompute is RecomputeMode.CONTINUE:
                state.prefix = list(tokens)
            return False
        full = state.prefix + list(tokens)
        text = row.text if not state.prefix and tokens is row.token_ids else self.engine.decode(full)
        record = self.record(index, full, reason, finished_at)
        record.text = text
        return True

    def record(self, index: int, tokens: list[int], reason: FinishReason, finished_at: float) -> RequestRecord:
        record = self.records[index]
        if record is None:
            record = RequestRecord(
                id=self.requests[index].id,
                text="",
                token_ids=tokens,
                finish_reason=reason,
                prompt_tokens=len(self.state(index).prompt_ids),
                limit=self.limits[index],
                predicted=None if self.predicted is None else self.predicted[index],
            )
            self.records[index] = record
        record.token_ids, record.finish_reason, record.completion_s = tokens, reason, finished_at
        return record

    def run(self) -> RunResult:
        for sampling, members in self.sampling_groups():
            predicted = (
                [self.predicted[index] for index in members] if self.predicted is not None else [0] * len(members)
            )
            failed: list[int] = []
            for batch in plan(predicted, self.cfg, [self.limits[index] for index in members]):
                failed.extend(self.execute(batch, members, sampling))
            if not failed:
                continue
            remaining = {index: self.limits[index] - len(self.state(index).prefix) for index in failed}
            # recompute_plan works on indices into `failed`; map back through it.
            local = recompute_plan(list(range(len(failed))), self.cfg, {i: remaining[f] for i, f in enumerate(failed)})
            for batch in local:
                left = self.execute(batch, failed, sampling)
                assert not left, "recompute batches cover every budget"
        generation_s = time.perf_counter() - self.started
        records = [record for record in self.records if record is not None]
        assert len(records) == len(self.requests), "every request gets a record"
        return RunResult(records, self.batches, self.metrics(records, generation_s), self.cfg)

    def metrics(self, records: list[RequestRecord], generation_s: float) -> RunMetrics:
        return compute_metrics(self.cfg, records, self.batches, generation_s, self.predictor_s)


def compute_metrics(
    cfg: ScheduleConfig,
    records: Sequence[RequestRecord],
    batches: Sequence[BatchRecord],
    generation_s: float,
    predictor_s: float,
) -> RunMetrics:
    """A run's metrics from its request and batch records (any engine)."""
    total_s = generation_s + predictor_s
    generated = sum(record.num_tokens for record in records)
    row_steps = sum(batch.row_steps for batch in batches)
    recompute_steps = sum(batch.row_steps for batch in batches if batch.phase is Phase.RECOMPUTE)
    failed = sum(record.recomputed for record in records)
    wasted = 0 if cfg.recompute is RecomputeMode.CONTINUE else sum(r.attempt_tokens for r in records)
    latencies = [record.completion_s for record in records]
    return RunMetrics(
        strategy=cfg.strategy.value,
        requests=len(records),
        batches=len(batches),
        total_s=total_s,
        generation_s=generation_s,
        predictor_s=predictor_s,
        predictor_share=predictor_s / total_s if total_s else 0.0,
        samples_per_s=len(records) / total_s if total_s else 0.0,
        tokens_per_s=generated / total_s if total_s else 0.0,
        generated_tokens=generated,
        row_steps=row_steps,
        effective_token_ratio=generated / row_steps if row_steps else 0.0,
        failed=failed,
        failure_ratio=failed / len(records) if records else 0.0,
        recomputed_tokens=wasted,
        recompute_row_steps=recompute_steps,
        recompute_share=recompute_steps / row_steps if row_steps else 0.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p99_s=percentile(latencies, 99),
        prefill_s=sum(batch.prefill_s for batch in batches),
        decode_s=sum(batch.decode_s for batch in batches),
        oom_splits=sum(batch.oom_splits for batch in batches),
    )


def check_predictions(requests: Sequence[Request], predicted: Sequence[int] | None, cfg: ScheduleConfig) -> None:
    """Predicted lengths are there when the strategy needs them, one per request."""
    if predicted is None and cfg.needs_predictions:
        raise SeqschedError(f"strategy {cfg.strategy.value!r} needs predicted lengths; use vanilla or a predictor")
    if predicted is not None and len(predicted) != len(requests):
        raise ValueError(f"{len(predicted)} predicted lengths for {len(requests)} requests")


def run(
    engine: Engine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    *,
    predictor_s: float = 0.0,
) -> RunResult:
    """Serve requests with a schedule; outputs come back in input order.

    predicted: one length per request (None only for vanilla); predictor_s: time already spent predicting,
    counted in the run's total time and latencies.
    """
    options = options or RunOptions()
    check_predictions(requests, predicted, cfg)
    from tqdm import tqdm

    with tqdm(total=len(requests), unit="req", desc=cfg.strategy.value, disable=not options.progress) as bar:
        return _Run(engine, requests, predicted, cfg, options, predictor_s, bar.update).run()
