"""The state every run keeps, whichever engine serves it: per-request prompts and records, the FCR bookkeeping
(a row cut short by its cap goes again, from scratch or from its prefix), and the result in input order."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seqsched.engines.api import Engine, FinishReason, RowOutput, SamplingParams
from seqsched.requests import Request
from serving.policy.scheduler import Phase, RecomputeMode, ScheduleConfig
from serving.runner.records import BatchRecord, RequestRecord, RunOptions, RunResult, run_metrics


@dataclass
class PendingRequest:
    """A request's state during the run."""

    prompt_ids: list[int]
    prefix: list[int] = field(default_factory=list)
    """Tokens kept from a cut-short attempt (continue mode)."""


class RunState(abc.ABC):
    """One run's mutable state; subclasses decide how the engine is driven (`serve_group`)."""

    def __init__(
        self,
        engine: Engine,
        requests: Sequence[Request],
        predicted: Sequence[int] | None,
        cfg: ScheduleConfig,
        options: RunOptions,
        predictor_s: float,
        on_progress: Callable[[int], None],
        shared_prefill_s: float = 0.0,
        tuning_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.requests = requests
        self.cfg = cfg
        self.options = options
        if options.positions is not None and len(options.positions) != len(requests):
            raise ValueError(f"{len(options.positions)} positions for {len(requests)} requests")
        self.predictor_s = predictor_s
        self.shared_prefill_s = shared_prefill_s
        self.tuning_s = tuning_s
        self.on_progress = on_progress
        self.predicted = list(predicted) if predicted is not None else None
        self.limits = [min(cfg.limit, request.max_tokens or cfg.limit) for request in requests]
        self.records: list[RequestRecord | None] = [None] * len(requests)
        self.batches: list[BatchRecord] = []
        self.pending: dict[int, PendingRequest] = {}
        self.extra: dict[str, object] = {}
        """What the engine reported beyond the records (a continuous engine's per-submission counters)."""
        self.started = time.perf_counter()

    def sampling_groups(self) -> list[tuple[SamplingParams, list[int]]]:
        """Requests grouped by their decoding settings (a batch shares one), in order of first appearance."""
        groups: dict[SamplingParams, list[int]] = {}
        for index, request in enumerate(self.requests):
            temperature = self.options.temperature if request.temperature is None else request.temperature
            params = SamplingParams(temperature=temperature, top_p=self.options.top_p)
            groups.setdefault(params, []).append(index)
        return list(groups.items())

    def state(self, index: int) -> PendingRequest:
        """A request's prompt ids (encoded once) and kept prefix."""
        if index not in self.pending:
            self.pending[index] = PendingRequest(self.engine.encode(self.requests[index].chat()))
        return self.pending[index]

    def budget(self, index: int) -> int:
        """Tokens a request may still generate: its own limit less the prefix it keeps."""
        return self.limits[index] - len(self.state(index).prefix)

    def prompt(self, index: int) -> list[int]:
        """What the engine is fed for a request: its prompt, then any kept prefix."""
        state = self.state(index)
        return state.prompt_ids + state.prefix

    def seed(self, index: int) -> int:
        """Request i samples with seed + i (i: its position in the whole job), so its output does not depend on
        where it runs."""
        positions = self.options.positions
        return self.options.seed + (index if positions is None else positions[index])

    def elapsed(self) -> float:
        """Seconds since the run started, the predictor's and the tuning's time included."""
        return time.perf_counter() - self.started + self.predictor_s + self.tuning_s

    def finish(self, index: int, row: RowOutput, budget: int, phase: Phase, finished_at: float) -> bool:
        """Record a row's result; False when it was cut short by its cap and must go again."""
        state = self.state(index)
        tokens, reason = row.token_ids, row.finish_reason
        if len(tokens) > budget:  # the pass ran past this request's own max_tokens
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
        self.report(index, record)
        return True

    def fail(self, index: int, error: str, code: str, finished_at: float) -> None:
        """Record that a request cannot be served (it gets an error line; the rest of the run goes on)."""
        record = self.record(index, [], FinishReason.LENGTH, finished_at)
        record.error, record.error_code = error, code
        self.report(index, record)

    def report(self, index: int, record: RequestRecord) -> None:
        """Tell the caller a request's final result (RunOptions.on_finished): the one place both runners use."""
        if self.options.on_finished is not None:
            self.options.on_finished(index, record)

    def record(self, index: int, tokens: list[int], reason: FinishReason, finished_at: float) -> RequestRecord:
        """The request's record, created on first use and updated with its latest result."""
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

    def admission(self) -> str:
        """The admission policy's name on a continuous engine; "-" for static batches."""
        return "-"

    @abc.abstractmethod
    def serve_group(self, sampling: SamplingParams, members: list[int]) -> None:
        """Serve requests sharing one decoding setting: initial pass, then the recompute pass for failures."""

    def run(self) -> RunResult:
        """Serve every request; records in input order with the run's metrics."""
        for sampling, members in self.sampling_groups():
            self.serve_group(sampling, members)
        generation_s = time.perf_counter() - self.started
        records = [record for record in self.records if record is not None]
        assert len(records) == len(self.requests), "every request gets a record"
        metrics = run_metrics(
            self.cfg,
            records,
            self.batches,
            generation_s,
            self.predictor_s,
            self.admission(),
            shared_prefill_s=self.shared_prefill_s,
            tuning_s=self.tuning_s,
        )
        return RunResult(records, self.batches, metrics, self.cfg, self.extra)
