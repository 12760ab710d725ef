"""What a run reports: per-request and per-batch records, the metrics, the result (no torch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seqsched.engines.api import FinishReason
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from seqsched.stats import percentile
from serving.policy.scheduler import Admission, Phase, RecomputeMode, ScheduleConfig


@dataclass(frozen=True)
class RunOptions:
    """Decoding settings for requests that do not set their own, and how the run reports."""

    temperature: float = 0.0
    """Default temperature (a request's own `temperature` wins); 0 is greedy."""
    top_p: float = 1.0
    seed: int = 0
    """Request i samples with seed + i, so its output does not depend on which batch it lands in."""
    positions: tuple[int, ...] | None = None
    """Each request's position in the whole job when this run serves part of it (a resumed run, a data-parallel
    shard): request i then samples with seed + positions[i], the same sample as in one uninterrupted run."""
    progress: bool = False
    """Show a tqdm progress bar."""
    on_finished: Callable[[int, RequestRecord], None] | None = None
    """Called once per request as soon as its final result is known (index into the run's requests), so a caller
    can keep finished work on disk while the run goes on (serve's checkpoint); requests that end in an error
    (out of memory alone) are reported too, with record.error set."""


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
    error: str | None = None
    """Why the request has no output (e.g. it ran out of memory alone in its batch); None when served."""
    error_code: str | None = None
    """A short machine-readable kind of error (OpenAI style: `out_of_memory`, `context_length_exceeded`)."""

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
    admission: str
    """The admission policy of a continuous run (fcfs, sjf, sjf-fcr); "-" for static batches."""
    requests: int
    batches: int
    total_s: float
    """Predictor, tuning and generation wall time."""
    generation_s: float
    predictor_s: float
    """Time the prediction added (a probe that shares the serving prefill: its head; the prefill is in prefill_s)."""
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
    latency_mean_s: float
    """Mean completion latency: seconds from the start of the run (every request submitted at t=0, predictor
    included) until the request's output was complete."""
    latency_p50_s: float
    latency_p99_s: float
    time_to_half_s: float
    """Seconds until half of the requests (rounded up) were complete."""
    prefill_s: float
    decode_s: float
    oom_splits: int
    shared_prefill_s: float = 0.0
    """Prefill run ahead of the batches while predicting (reused by generation; counted in prefill_s)."""
    errors: int = 0
    """Requests that ended in an error instead of an output (out of memory even alone)."""
    tuning_s: float = 0.0
    """Seconds spent tuning the schedule on these requests (simulation) before generating."""

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


def _latency(latencies: Sequence[float], q: float) -> float:
    return percentile(latencies, q) if latencies else math.nan


def time_to_fraction(latencies: Sequence[float], fraction: float = 0.5) -> float:
    """Seconds until `fraction` of the requests (rounded up, at least one) were complete."""
    if not latencies:
        return math.nan
    needed = max(1, math.ceil(fraction * len(latencies)))
    return sorted(latencies)[needed - 1]


def run_metrics(
    cfg: ScheduleConfig,
    records: Sequence[RequestRecord],
    batches: Sequence[BatchRecord],
    generation_s: float,
    predictor_s: float,
    admission: str = "-",
    shared_prefill_s: float = 0.0,
    tuning_s: float = 0.0,
) -> RunMetrics:
    """A run's metrics from its request and batch records (any engine). predictor_s: all time before generation
    spent predicting; shared_prefill_s: the part of it that prefilled prompts for generation (a probe reading
    the served model); tuning_s: simulating schedules before generating."""
    total_s = generation_s + predictor_s + tuning_s
    own_predictor_s = max(0.0, predictor_s - shared_prefill_s)
    generated = sum(record.num_tokens for record in records)
    row_steps = sum(batch.row_steps for batch in batches)
    recompute_steps = sum(batch.row_steps for batch in batches if batch.phase is Phase.RECOMPUTE)
    failed = sum(record.recomputed for record in records)
    wasted = 0 if cfg.recompute is RecomputeMode.CONTINUE else sum(r.attempt_tokens for r in records)
    latencies = [record.completion_s for record in records]
    return RunMetrics(
        strategy=cfg.strategy.value,
        admission=admission,
        requests=len(records),
        batches=len(batches),
        total_s=total_s,
        generation_s=generation_s,
        predictor_s=own_predictor_s,
        predictor_share=own_predictor_s / total_s if total_s else 0.0,
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
        latency_mean_s=sum(latencies) / len(latencies) if latencies else math.nan,
        latency_p50_s=_latency(latencies, 50),
        latency_p99_s=_latency(latencies, 99),
        time_to_half_s=time_to_fraction(latencies),
        prefill_s=sum(batch.prefill_s for batch in batches) + shared_prefill_s,
        decode_s=sum(batch.decode_s for batch in batches),
        oom_splits=sum(batch.oom_splits for batch in batches),
        shared_prefill_s=shared_prefill_s,
        errors=sum(record.error is not None for record in records),
        tuning_s=tuning_s,
    )


def check_predictions(requests: Sequence[Request], predicted: Sequence[int] | None, cfg: ScheduleConfig) -> None:
    """Predicted lengths are there when the strategy needs them, one per request."""
    if predicted is None and cfg.needs_predictions:
        what = f"strategy {cfg.strategy.value!r}" if cfg.policy is Admission.AUTO else f"policy {cfg.policy.value!r}"
        raise SeqschedError(f"{what} needs predicted lengths; use vanilla (fcfs) or a predictor")
    if predicted is not None and len(predicted) != len(requests):
        raise ValueError(f"{len(predicted)} predicted lengths for {len(requests)} requests")
