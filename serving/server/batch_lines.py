"""A batch job's lines while it runs: the job's state in memory, where each line's result goes (LineSink, on the
engine thread), and finished lines' records as the store keeps them."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from seqsched.engines.api import FinishReason, RowOutput
from serving.batch_io import BatchInput
from serving.runner import RequestRecord
from serving.server.worker import CANCELLED

NOT_RUN_CODES = ("batch_cancelled", "batch_expired")
NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


def record_dict(record: RequestRecord) -> dict[str, Any]:
    """A finished line's record as stored."""
    data = dataclasses.asdict(record)
    data["finish_reason"] = record.finish_reason.value
    return data


def record_from(data: dict[str, Any]) -> RequestRecord:
    """A stored record back."""
    known = {item.name for item in dataclasses.fields(RequestRecord)}
    values = {key: value for key, value in data.items() if key in known}
    values["finish_reason"] = FinishReason(values["finish_reason"])
    return RequestRecord(**values)


@dataclass
class Job:
    """A running job's state in memory (its batch object and finished lines are in the store)."""

    batch_id: str
    batch: BatchInput | None = None
    finished: dict[int, RequestRecord] = field(default_factory=dict)
    """Records by request index (position among the input's readable requests)."""
    outstanding: dict[int, int] = field(default_factory=dict)
    """Queued or running lines: request index -> the worker's key."""
    queuing: bool = True
    """True until the job thread has queued every line (no line outstanding then does not mean done)."""
    stop_as: str | None = None
    """cancelled or expired once asked to stop."""
    finalizing: bool = False
    """True once its finalization is scheduled (it happens once)."""
    started_s: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def counts(self) -> dict[str, int]:
        """OpenAI's request_counts: total lines, completed (served), failed (error lines so far)."""
        total = len(self.batch.records) if self.batch is not None else 0
        served = sum(record.error is None for record in self.finished.values())
        unreadable = len(self.batch.errors) if self.batch is not None else 0
        return {"total": total, "completed": served, "failed": unreadable + len(self.finished) - served}


class LineOwner(Protocol):
    """What a line reports to (serving.server.jobs.BatchJobs)."""

    def line_finished(self, job: Job, index: int, record: RequestRecord, computed: bool) -> None:
        """A line is final."""

    def line_dropped(self, job: Job, index: int) -> None:
        """A line left the engine unfinished."""


class LineSink:
    """Where a batch line's result goes (called on the engine thread)."""

    def __init__(self, jobs: LineOwner, job: Job, index: int, prompt_tokens: int, budget: int, predicted: int | None):
        self.jobs, self.job, self.index = jobs, job, index
        self.prompt_tokens, self.budget, self.predicted = prompt_tokens, budget, predicted

    def tokens(self, token_ids: list[int]) -> None:
        """Lines are not streamed."""

    def done(self, row: RowOutput) -> None:
        """Keep the finished line (committed before the job counts it)."""
        assert self.job.batch is not None
        request = self.job.batch.requests[self.index]
        record = RequestRecord(
            id=request.id,
            text=row.text,
            token_ids=list(row.token_ids),
            finish_reason=row.finish_reason,
            prompt_tokens=self.prompt_tokens,
            limit=self.budget,
            predicted=self.predicted,
            completion_s=time.perf_counter() - self.job.started_s,
            error=row.error,
            error_code=row.error_code,
        )
        self.jobs.line_finished(self.job, self.index, record, computed=True)

    def failed(self, message: str, code: str, status: int) -> None:
        """A refused line is an error line; a cancelled one (or one dropped at shutdown) is left for its job."""
        if code in (CANCELLED, "shutdown"):
            self.jobs.line_dropped(self.job, self.index)
            return
        assert self.job.batch is not None
        request = self.job.batch.requests[self.index]
        record = RequestRecord(
            request.id, "", [], FinishReason.LENGTH, self.prompt_tokens, self.budget, self.predicted, error=message
        )
        record.error_code = code
        self.jobs.line_finished(self.job, self.index, record, computed=False)


def not_run(request: Any, final: str) -> RequestRecord:
    """The record of a line a cancelled or expired batch never ran (an error line with OpenAI's code)."""
    code, message = NOT_RUN.get(final, ("batch_failed", "This request was not executed."))
    record = RequestRecord(request.id, "", [], FinishReason.LENGTH, 0, 0, None, error=message)
    record.error_code = code
    return record


def usage_of(records: list[RequestRecord]) -> dict[str, Any]:
    served = [record for record in records if record.error is None]
    prompt = sum(record.prompt_tokens for record in served)
    output = sum(record.num_tokens for record in served)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }
