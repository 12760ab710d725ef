"""Batch jobs (OpenAI's Batch API): validating -> in_progress -> finalizing -> completed, or failed, cancelling ->
cancelled, expired.

A job reads its input file with the reader `seqsched serve` uses (serving.batch_io), turns away the lines serve
would (prompt_checks), predicts the rest's lengths and queues every line in the server's one queue (lane: batch).
Each finished line's record is committed to the store as it finishes, so a server killed mid-job resumes at its
next start without computing a finished line again. At the end the lines are written in input order with the very
function serve writes its output with (serving.batch_io.output_lines): successes to the output file, the rest to
the error file. A cancelled or expired job keeps its finished lines (as OpenAI does); its unfinished ones go to the
error file (codes batch_cancelled, batch_expired). One job's failure is that job's `failed` status, never another's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from seqsched.engines.api import FinishReason, SamplingParams
from seqsched.requests import OPENAI_CHAT_URL, InputFormat
from serving.batch_io import BatchInput, OutputFormat, output_lines, read_batch_input
from serving.runner import RequestRecord
from serving.server.batch_lines import (
    NOT_RUN_CODES,
    Job,
    LineSink,
    not_run,
    record_dict,
    record_from,
    usage_of,
)
from serving.server.config import ServerConfig
from serving.server.errors import bad_request, not_found
from serving.server.metrics import ServerMetrics
from serving.server.objects import batch_object
from serving.server.predict import PredictionService
from serving.server.prompts import PromptEncoder
from serving.server.queue import Lane
from serving.server.store import Store, new_batch_id
from serving.server.worker import CANCELLED, EngineWorker, Work

log = logging.getLogger(__name__)

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
MOST_WINDOW_S = 24 * 3600


def completion_window_s(window: Any) -> int:
    """Seconds of a completion window: OpenAI's "24h", or any shorter "<N>h|m|s" (ours: lets tests expire jobs)."""
    text = str(window).strip()
    unit = WINDOW_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or not 0 < int(text[:-1]) * unit <= MOST_WINDOW_S:
        raise bad_request(
            f"Invalid completion_window {window!r}: use '24h' (or a shorter window such as '30m').",
            "completion_window",
            "invalid_value",
        )
    return int(text[:-1]) * unit


class BatchJobs:
    """Creates, runs, cancels, expires and resumes batch jobs."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        worker: EngineWorker,
        encoder: PromptEncoder,
        predictions: PredictionService | None,
        metrics: ServerMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.worker = worker
        self.encoder = encoder
        self.predictions = predictions
        self.metrics = metrics
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seqsched-jobs")

    # API.

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/batches: check the request, store the batch (validating) and start it."""
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            missing = "missing_required_parameter"
            raise bad_request("Missing required parameter: 'input_file_id'.", "input_file_id", missing)
        endpoint = body.get("endpoint")
        if endpoint != OPENAI_CHAT_URL:
            raise bad_request(
                f"Unsupported endpoint {endpoint!r}: this server runs batches of {OPENAI_CHAT_URL}.",
                "endpoint",
                "invalid_value",
            )
        window = body.get("completion_window", "24h")
        window_s = completion_window_s(window)
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= 16 and all(isinstance(v, str) for v in metadata.values())
        ):
            raise bad_request("'metadata' must be an object of at most 16 string values.", "metadata", "invalid_value")
        file = self.store.get_file(file_id)
        if file is None:
            raise not_found(f"No such File object: {file_id}", "input_file_id")
        if file["purpose"] != "batch":
            raise bad_request(f"File {file_id} was not uploaded with purpose 'batch'.", "input_file_id")
        batch = batch_object(new_batch_id(), file_id, endpoint, str(window), window_s, self.config.model_name, metadata)
        self.store.put_batch(batch)
        self._start(batch["id"])
        return batch

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """GET /v1/batches/{id}, with live request counts for a running job."""
        batch = self.store.get_batch(batch_id)
        if batch is None:
            raise not_found(f"No batch found with id '{batch_id}'.", "batch_id")
        job = self.jobs.get(batch_id)
        if job is not None and job.batch is not None and batch["status"] in ACTIVE:
            with job.lock:
                batch["request_counts"] = job.counts()
        return batch

    def list(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """GET /v1/batches: newest first."""
        batches, more = self.store.list_batches(after, limit)
        return [self.retrieve(batch["id"]) for batch in batches], more

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """POST /v1/batches/{id}/cancel: stop queuing its lines; finished ones stay in its output file."""
        status = self.retrieve(batch_id)["status"]
        if status not in ("validating", "in_progress", "cancelling", "cancelled"):
            raise bad_request(f"Cannot cancel a batch with status '{status}'.", "batch_id", "invalid_state")
        if self._update(batch_id, ("validating", "in_progress"), status="cancelling", cancelling_at=int(time.time())):
            self._stop(batch_id, "cancelled")
        return self.retrieve(batch_id)

    def input_in_use(self, file_id: str) -> list[str]:
        """Active batches reading this file (it must not be deleted under them)."""
        return self.store.batches_using(file_id, ("validating", "in_progress", "cancelling"))

    # Lifecycle.

    def resume(self) -> None:
        """At start: pick up what a previous process left (its finished lines are kept; the rest is queued)."""
        for batch in self.store.batches_in(ACTIVE):
            if batch["status"] in ("validating", "in_progress"):
                log.info("resuming batch %s", batch["id"])
                self._start(batch["id"])
            else:
                final = "cancelled" if batch["status"] == "cancelling" else "completed"
                self._submit(self._finalize, batch["id"], final)

    def tick(self, now: float | None = None) -> None:
        """Expire jobs whose completion window has passed (called about once a second)."""
        now = time.time() if now is None else now
        for batch_id in list(self.jobs):
            batch = self.store.get_batch(batch_id)
            if batch is not None and batch["status"] in ("validating", "in_progress") and batch["expires_at"] <= now:
                self._stop(batch_id, "expired")

    def shutdown(self) -> None:
        """Stop taking new work (the engine thread drops what is queued: it resumes at the next start)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, function: Any, *args: Any) -> None:
        def guarded() -> None:
            try:
                function(*args)
            except Exception as error:  # this job fails; the server and every other job go on
                if self.worker.stopping:  # the server is stopping: the job resumes at the next start
                    log.info("batch %s left for the next start (%s)", args[0], error)
                    return
                log.exception("batch %s failed", args[0])
                self._fail(args[0], "server_error", f"The batch failed: {type(error).__name__}: {error}")

        self._executor.submit(guarded)

    def _start(self, batch_id: str) -> None:
        with self._lock:
            self.jobs.setdefault(batch_id, Job(batch_id))
        self._submit(self._run, batch_id)

    def _run(self, batch_id: str) -> None:
        """Validate the input, keep what an earlier process finished, turn away what cannot be served, queue the
        rest (on a job thread)."""
        job = self.jobs[batch_id]
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] not in ("validating", "in_progress", "cancelling"):
            return  # (a job cancelled before this ran still reads its input: it finalizes with nothing run)
        try:
            source = self._read_input(batch)
        except InputMissing as error:
            self._fail(batch_id, "missing_file", str(error))
            return
        if not source.records:
            self._fail(batch_id, "empty_file", "The input file has no requests.")
            return
        if len(source.records) > self.config.max_file_lines:
            count, most = len(source.records), self.config.max_file_lines
            self._fail(batch_id, "too_many_requests", f"The input file has {count} requests; at most {most} allowed.")
            return
        job.batch = source
        requests = job.batch.requests
        with job.lock:
            job.finished = {index: record_from(data) for index, data in self.store.lines(batch_id).items()}
        pending = [index for index in range(len(requests)) if index not in job.finished]
        with job.lock:
            counts = job.counts()
        self._update(batch_id, ("validating",), status="in_progress", in_progress_at=int(time.time()))
        self._update(batch_id, ACTIVE, request_counts=counts)
        ids, rejected = self.encoder.chat([requests[index] for index in pending])
        for local, why in rejected.items():
            index = pending[local]
            record = RequestRecord(
                requests[index].id, "", [], FinishReason.LENGTH, why.prompt_tokens, why.limit, None, error=why.problem
            )
            record.error_code = why.code
            self.line_finished(job, index, record, computed=False)
        todo = [(index, ids[local]) for local, index in enumerate(pending) if local not in rejected]
        group = self.config.predict_batch
        for start in range(0, len(todo), group):  # predicted and queued group by group: lines start flowing early
            part = todo[start : start + group]
            predicted: list[int | None] = [None] * len(part)
            if self.predictions is not None:
                predicted = self.predictions.predict([requests[index] for index, _ in part], Lane.BATCH)
            with job.lock:
                if job.stop_as is not None:
                    break
                for (index, prompt_ids), length in zip(part, predicted, strict=True):
                    job.outstanding[index] = self.worker.submit(self._work(job, index, prompt_ids, length))
        with job.lock:
            job.queuing = False
        self._maybe_finish(job)

    def _work(self, job: Job, index: int, prompt_ids: list[int], predicted: int | None) -> Work:
        """A line as engine work: its cap, decoding settings and seed exactly as `seqsched serve` gives them."""
        assert job.batch is not None
        request = job.batch.requests[index]
        budget = min(self.config.limit, request.max_tokens or self.config.limit)
        temperature = self.config.temperature if request.temperature is None else request.temperature
        sink = LineSink(self, job, index, len(prompt_ids), budget, predicted)
        return Work(
            lane=Lane.BATCH,
            prompt_ids=prompt_ids,
            max_tokens=budget,
            sink=sink,
            sampling=SamplingParams(temperature=temperature, top_p=self.config.top_p),
            seed=self.config.seed + index,  # serve's rule: request i samples with seed + i
            predicted=predicted,
            owner=job.batch_id,
        )

    def line_finished(self, job: Job, index: int, record: RequestRecord, computed: bool) -> None:
        """A line is final: commit it, then count it (and finish the job when it was the last)."""
        self.store.save_line(job.batch_id, index, record_dict(record))
        with job.lock:
            job.finished[index] = record
            job.outstanding.pop(index, None)
        if computed:
            outcome = "completed" if record.error is None else "failed"
            self.metrics.finished(Lane.BATCH.value, outcome, batch_line_computed=True)
        self._maybe_finish(job)

    def line_dropped(self, job: Job, index: int) -> None:
        """A line left the engine unfinished (cancelled or expired job, or shutdown)."""
        with job.lock:
            job.outstanding.pop(index, None)
        self.metrics.finished(Lane.BATCH.value, CANCELLED)
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        """Schedule the job's finalization once nothing of it is queued or running any more (lines dropped at
        shutdown leave it unfinished: it resumes at the next start)."""
        with job.lock:
            if job.finalizing or job.queuing or job.batch is None or job.outstanding:
                return
            if job.stop_as is None and len(job.finished) < len(job.batch.requests):
                return
            job.finalizing = True
            final = job.stop_as or "completed"
        self._submit(self._finalize, job.batch_id, final)

    def _stop(self, batch_id: str, final: str) -> None:
        """Cancel or expire a job: its queued and running lines are cancelled; it finalizes once none is left."""
        job = self.jobs.get(batch_id)
        if job is None:  # nothing of it runs in this process
            self._submit(self._finalize, batch_id, final)
            return
        with job.lock:
            if job.stop_as is not None or job.finalizing:
                return
            job.stop_as = final
        self.worker.cancel_owner(batch_id)
        self._maybe_finish(job)

    def _finalize(self, batch_id: str, final: str) -> None:
        """Write the output and error files in input order and close the batch (completed, cancelled, expired)."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] in TERMINAL:
            self.jobs.pop(batch_id, None)
            return
        if final == "completed":
            self._update(batch_id, ACTIVE, status="finalizing", finalizing_at=int(time.time()))
        job = self.jobs.get(batch_id)
        source = job.batch if job is not None and job.batch is not None else self._read_input(batch)
        finished = {index: record_from(data) for index, data in self.store.lines(batch_id).items()}
        requests = source.requests
        records = [finished.get(index) or not_run(request, final) for index, request in enumerate(requests)]
        lines = list(output_lines(source, records, OutputFormat.OPENAI, self.config.model_name))
        served = [line for line in lines if line["error"] is None]
        failed = [line for line in lines if line["error"] is not None]
        changes: dict[str, Any] = {}
        for name, part, key in (("output", served, "output_file_id"), ("errors", failed, "error_file_id")):
            if part:
                data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in part).encode()
                changes[key] = self.store.add_bytes(data, f"{batch_id}_{name}.jsonl", "batch_output")["id"]
        never_run = sum(record.error_code in NOT_RUN_CODES for record in records)
        changes["request_counts"] = {
            "total": len(source.records),
            "completed": len(served),
            "failed": len(failed) - never_run,
        }
        changes["usage"] = usage_of(records)
        self._update(batch_id, ACTIVE, status=final, **{f"{final}_at": int(time.time())}, **changes)
        self.store.drop_lines(batch_id)
        self.jobs.pop(batch_id, None)
        log.info("batch %s %s: %s", batch_id, final, changes["request_counts"])

    def _read_input(self, batch: dict[str, Any]) -> BatchInput:
        """A batch's input read as `seqsched serve` reads it; error messages name the file by its id, never by
        where it lies on the server."""
        file = self.store.get_file(batch["input_file_id"])
        if file is None:
            raise InputMissing(f"The input file {batch['input_file_id']} no longer exists.")
        path = self.store.file_path(file)
        lines = read_batch_input(path, InputFormat.OPENAI_BATCH)
        records = [
            dataclasses.replace(record, error=record.error.replace(str(path), file["id"])) if record.error else record
            for record in lines.records
        ]
        return BatchInput(file["id"], records, openai=True)

    def _fail(self, batch_id: str, code: str, message: str) -> None:
        """The job failed as a whole: status failed with OpenAI's errors list; other jobs go on."""
        job = self.jobs.pop(batch_id, None)
        if job is not None:
            with job.lock:
                job.finalizing = True  # its cancelled lines must not finalize it
            self.worker.cancel_owner(batch_id)
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        self._update(batch_id, ACTIVE, status="failed", failed_at=int(time.time()), errors=errors)

    def _update(self, batch_id: str, expected: tuple[str, ...], **changes: Any) -> dict[str, Any] | None:
        """Change a stored batch if its status is one of `expected` (every status change goes through here, one at a
        time, so a cancel and a job thread cannot overwrite each other); the batch after, or None."""
        with self._lock:
            batch = self.store.get_batch(batch_id)
            if batch is None or batch["status"] not in expected:
                return None
            batch.update(changes)
            self.store.put_batch(batch)
            return batch


class InputMissing(Exception):
    """A batch's input file was deleted."""
