"""Folding job events and record results into a job's status: pure functions, no Kafka."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from decimal import Decimal
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel

from schemas import JobCancelled, JobCreated, JobRetried, ResultEvent
from stream_app.provider.batches import at_batch_rates
from stream_app.provider.pricing import Price
from stream_app.provider.usage import Usage

JobState = Literal["pending", "running", "completed", "cancelled", "budget_exhausted", "failed"]
# Jobs whose last written status the ledger keeps (JobLedger._written).
_WRITTEN_JOBS = 1024
# States a job stays in once set, while its last outcomes come in.
_STOPPED = ("cancelled", "budget_exhausted", "failed")


class JobStatus(BaseModel):
    """One job's counters, as kept in the job-status table (one value per job)."""

    job_id: str
    status: JobState = "pending"
    # None until the job's "created" event is seen: results may overtake it.
    total_records: int | None = None
    completed_count: int = 0
    failed_count: int = 0
    # Records not processed because the job was cancelled before they started.
    skipped_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # Internal: the 1-hour part of the cache writes, which the cost needs.
    cache_creation_1h_input_tokens: int = 0
    estimated_cost: Decimal = Decimal(0)
    # What the job's batch-lane results would have cost at live prices, less what they cost.
    saving_usd: Decimal = Decimal(0)
    created_at: float | None = None
    updated_at: float | None = None
    owner: str | None = None
    cancelled_at: float | None = None
    # The job's task (preset name, "custom", or None for the default), model, and cap (USD).
    task: str | None = None
    model: str | None = None
    max_cost_usd: Decimal | None = None
    # Its share of the budget while other jobs wait (None: normal).
    priority: str | None = None
    # Its lane (None: not announced, or announced without one) and why.
    lane: str | None = None
    lane_reason: str | None = None
    deadline: str | None = None
    # Lets readers list results before the "created" event has told them the total.
    highest_index: int = -1
    # Retry rounds asked for (POST .../retry), and records of them without a new outcome.
    retries: int = 0
    retrying: int = 0

    @property
    def total_tokens_used(self) -> int:
        """Every billed token: input, output, cache writes and cache reads."""
        return Usage.of(self).total

    @property
    def outcomes(self) -> int:
        return self.completed_count + self.failed_count + self.skipped_count

    def stalled(self, now: float, after_seconds: float) -> bool:
        """Unfinished, and no record got an outcome for `after_seconds` (since the job was
        announced, or since its last outcome)."""
        if self.status not in ("pending", "running"):
            return False
        last = self.updated_at if self.updated_at is not None else self.created_at
        return last is not None and now - last >= after_seconds


def _settle(job: JobStatus) -> JobStatus:
    if job.status in _STOPPED:
        return job
    if job.retrying > 0:
        job.status = "running"
    elif job.total_records is not None and job.outcomes >= job.total_records:
        job.status = "completed"
    elif job.outcomes > 0:
        job.status = "running"
    else:
        job.status = "pending"
    return job


def apply_created(job: JobStatus | None, event: JobCreated, now: float) -> JobStatus:
    """A job announced itself. A repeated announcement changes nothing."""
    if job is not None and job.total_records is not None:
        return job
    job = job.model_copy() if job is not None else JobStatus(job_id=event.job_id)
    job.total_records = event.total_records
    job.created_at = event.created_at or now
    job.owner = event.owner
    if event.task is not None:
        job.task = event.task_name or "custom"
        job.model = event.task.model
    if event.max_cost_usd is not None:
        job.max_cost_usd = Decimal(str(event.max_cost_usd))
    job.priority = event.priority
    job.lane, job.lane_reason, job.deadline = event.lane, event.lane_reason, event.deadline
    job.updated_at = now
    return _settle(job)


def apply_result(job: JobStatus | None, result: ResultEvent, price: Price, now: float) -> JobStatus:
    """Count one record's outcome. The caller guarantees each (job, index) comes once.
    `price`: the live price of the model that billed it; a batch-lane result (`lane`
    "batch") costs the batch rates (`stream_app.provider.batches.at_batch_rates`), and the
    difference is the job's saving."""
    job = job.model_copy() if job is not None else JobStatus(job_id=result.job_id, created_at=now)
    if result.skipped:
        job.skipped_count += 1
        if result.skip_reason == "budget_exhausted" and job.status not in _STOPPED:
            # Its spending cap was reached: the rest of its records are being skipped.
            job.status = "budget_exhausted"
    elif result.success:
        job.completed_count += 1
    else:
        job.failed_count += 1
    billed = Usage.of(result)
    for name, count in billed.fields().items():
        setattr(job, name, getattr(job, name) + count)
    if result.lane == "batch":
        cost = at_batch_rates(price).cost_of(billed)
        job.saving_usd += price.cost_of(billed) - cost
    else:
        cost = price.cost_of(billed)
    job.estimated_cost += cost
    job.highest_index = max(job.highest_index, result.index)
    job.updated_at = now
    return _settle(job)


def apply_cancelled(job: JobStatus | None, event: JobCancelled, now: float) -> JobStatus:
    """The job was cancelled: it stays `cancelled` while its last outcomes (calls that were
    in flight, skipped records) come in. A finished job is not changed; a repeated cancel
    changes nothing."""
    if job is not None and job.status != "pending" and job.status != "running":
        return job
    job = job.model_copy() if job is not None else JobStatus(job_id=event.job_id)
    job.status = "cancelled"
    job.cancelled_at = event.cancelled_at or now
    job.updated_at = now
    return job


def apply_retried(job: JobStatus | None, event: JobRetried, now: float) -> JobStatus | None:
    """Records of the job are sent again (retry round `event.retry`): the job runs until
    each has its new outcome. A round already applied (a redelivered event) changes
    nothing; an unknown job stays unknown (None)."""
    if job is None or event.retry <= job.retries:
        return job
    job = job.model_copy()
    job.retries = event.retry
    job.retrying = len(set(event.indexes))
    if job.status in _STOPPED:
        # A capped (or cancelled) job's records run again: it is no longer stopped.
        job.status = "running"
    job.updated_at = now
    return _settle(job)


def apply_replaced(
    job: JobStatus, old: ResultEvent, new: ResultEvent, price: Price, now: float
) -> JobStatus:
    """A retried record's new outcome replaces its old one: the old outcome's count goes,
    the new one's comes; the tokens (and cost) of the new attempt are added, those already
    billed stay."""
    job = job.model_copy()
    if old.skipped:
        job.skipped_count -= 1
    elif old.success:
        job.completed_count -= 1
    else:
        job.failed_count -= 1
    job.retrying = max(0, job.retrying - 1)
    return apply_result(job, new, price, now)


def accumulated(old: ResultEvent, new: ResultEvent) -> ResultEvent:
    """The stored result of a retried record: the new outcome, with the tokens and
    attempts of every round (what the job's counters add up)."""
    billed = Usage.of(old) + Usage.of(new)
    return new.model_copy(update={**billed.fields(), "attempts": old.attempts + new.attempts})


def result_out_of_range(job: JobStatus | None, result: ResultEvent) -> bool:
    return job is not None and job.total_records is not None and result.index >= job.total_records


def result_key(job_id: str, index: int) -> str:
    return f"{result_prefix(job_id)}{index}"


def result_prefix(job_id: str) -> str:
    """What every result key of the job starts with (another job's id may start with it
    too: the rest of one of this job's keys is digits only)."""
    return f"{job_id}#"


class Applied(Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    OUT_OF_RANGE = "out_of_range"


class JobLedger:
    """Job statuses and per-record results over two mappings (Faust tables in the worker,
    dicts in tests). Each (job, index) is counted once, whatever redelivery brings.

    A result is written before its job's counters, and results change only when a retried
    record's outcome (a higher `retry` round) replaces them, so the results are the truth.
    After a crash the counters can fall behind them: table
    recovery replays changelog entries newer than the last offset the store recorded, and
    those can carry an older value of a job's counters than the store already had. The
    events behind such a gap were not committed (Faust flushes the changelog before it
    commits), so they are redelivered and arrive as duplicates: the first duplicate of a
    job since the last rebalance recounts that job from its results.
    """

    def __init__(
        self,
        jobs: MutableMapping[str, dict[str, Any]],
        results: MutableMapping[str, dict[str, Any]],
        price: Price,
        price_of: Callable[[str | None], Price] | None = None,
    ) -> None:
        self._jobs = jobs
        self._results = results
        self._price = price
        # A result billed by another model than CLAUDE_MODEL (a task's own) is priced so.
        self._price_of = price_of
        self._recounted: set[str] = set()
        # Jobs whose next duplicate outcome recounts them even if recounted already (an
        # audit found their counts at odds with Kafka: stream_app.kafka.job_audit).
        self._recount_requested: set[str] = set()
        # job_id -> (the value this ledger last wrote, its JobStatus): a job read back as
        # just written is not validated again (once per outcome, the hot path). Any other
        # value (a changelog replay) is read from the table as before.
        self._written: dict[str, tuple[dict[str, Any], JobStatus]] = {}
        # (key, value) of the result last counted: the aggregate agent publishes it to the
        # job's live readers right after, without a second table read (results never change).
        self._last_result: tuple[str, dict[str, Any]] | None = None

    def price_for(self, result: ResultEvent) -> Price:
        """The live price of the model that billed `result` (see `cost_of`)."""
        if self._price_of is None or result.model is None:
            return self._price
        return self._price_of(result.model)

    def cost_of(self, result: ResultEvent) -> Decimal:
        """USD `result` cost: its model's price, at the batch rates for a batch-lane result."""
        price = self.price_for(result)
        if result.lane == "batch":
            price = at_batch_rates(price)
        return price.cost_of(Usage.of(result))

    def forget_recounts(self) -> None:
        """After a rebalance, recovery may have replayed old values again."""
        self._recounted.clear()

    def recount_on_next_duplicate(self, job_id: str) -> None:
        """The next outcome of `job_id` that is already stored rebuilds the job's counters
        from its stored results, even if a duplicate recounted it since the last rebalance."""
        self._recount_requested.add(job_id)

    def stored_indexes(self, job_id: str, end: int) -> set[int]:
        """Indexes below `end` that have a stored result (one lookup per index: for the
        memory store and tests; the worker reads the RocksDB store by key prefix)."""
        return {i for i in range(end) if result_key(job_id, i) in self._results}

    def job(self, job_id: str) -> JobStatus | None:
        """The job's status as stored (treat it as read-only: the apply_* functions copy)."""
        raw = self._jobs.get(job_id)
        if raw is None:
            return None
        written = self._written.get(job_id)
        if written is not None and written[0] == raw:
            return written[1]
        return JobStatus.model_validate(raw)

    def _store(self, job: JobStatus) -> None:
        raw = job.model_dump(mode="json")
        self._jobs[job.job_id] = raw
        self._written.pop(job.job_id, None)
        self._written[job.job_id] = (raw, job)
        if len(self._written) > _WRITTEN_JOBS:
            del self._written[next(iter(self._written))]  # the least recently written

    def jobs(self) -> list[JobStatus]:
        return [JobStatus.model_validate(raw) for raw in self._jobs.values()]

    def result(self, job_id: str, index: int) -> dict[str, Any] | None:
        """The stored result of one record (treat it as read-only), or None."""
        key = result_key(job_id, index)
        last = self._last_result
        if last is not None and last[0] == key:
            return last[1]
        return self._results.get(key)

    def record_created(self, event: JobCreated, now: float) -> JobStatus:
        job = apply_created(self.job(event.job_id), event, now)
        self._store(job)
        return job

    def record_cancelled(self, event: JobCancelled, now: float) -> JobStatus:
        job = apply_cancelled(self.job(event.job_id), event, now)
        self._store(job)
        return job

    def record_deleted(self, job_id: str) -> int:
        """Remove the job's status and every stored result of it (with Faust tables each
        removal is a tombstone in the table's changelog, so compaction drops the values
        there too). Returns how many results were removed; 0 for an unknown job."""
        stored = self.job(job_id)
        removed = 0
        if stored is not None:
            end = (
                stored.total_records
                if stored.total_records is not None
                else stored.highest_index + 1
            )
            for index in range(max(end, stored.highest_index + 1)):
                key = result_key(job_id, index)
                if key in self._results:
                    del self._results[key]
                    removed += 1
            del self._jobs[job_id]
        self._written.pop(job_id, None)
        self._recounted.discard(job_id)
        if self._last_result is not None and self._last_result[0].startswith(result_prefix(job_id)):
            self._last_result = None
        return removed

    def record_result(
        self, event: ResultEvent, now: float, *, offset: int | None = None
    ) -> tuple[Applied, JobStatus | None]:
        """Count one outcome. `offset` (of the event in `batch.results`) is kept with the
        stored result: live readers resume after the last one they saw."""
        key = result_key(event.job_id, event.index)
        if key in self._results:
            # A retry round's outcome replaces an earlier round's (read only then).
            known = self._results[key] if event.retry else None
            if known is not None and event.retry > known.get("retry", 0):  # type: ignore[operator]
                return self._replace(key, ResultEvent.model_validate(known), event, now, offset)
            requested = event.job_id in self._recount_requested
            if event.job_id in self._recounted and not requested:
                return Applied.DUPLICATE, None
            self._recount_requested.discard(event.job_id)
            self._recounted.add(event.job_id)
            return Applied.DUPLICATE, self._recount(event.job_id, now)
        job = self.job(event.job_id)
        if result_out_of_range(job, event):
            return Applied.OUT_OF_RANGE, job
        job = apply_result(job, event, self.price_for(event), now)
        stored = event.model_dump(mode="json", exclude_none=True)
        if offset is not None:
            stored["offset"] = offset
        self._results[key] = stored
        self._last_result = (key, stored)
        self._store(job)
        return Applied.COUNTED, job

    def record_retried(self, event: JobRetried, now: float) -> JobStatus | None:
        job = apply_retried(self.job(event.job_id), event, now)
        if job is not None:
            self._store(job)
        return job

    def _replace(
        self, key: str, old: ResultEvent, new: ResultEvent, now: float, offset: int | None
    ) -> tuple[Applied, JobStatus | None]:
        job = self.job(new.job_id)
        if job is None:
            return Applied.DUPLICATE, None
        # The new attempt's tokens priced at its own model; the old ones were counted.
        job = apply_replaced(job, old, new, self.price_for(new), now)
        stored = accumulated(old, new).model_dump(mode="json", exclude_none=True)
        if offset is not None:
            stored["offset"] = offset
        self._results[key] = stored
        self._last_result = (key, stored)
        self._store(job)
        return Applied.COUNTED, job

    def _recount(self, job_id: str, now: float) -> JobStatus | None:
        """Rebuild a job's counters from its stored results; None when nothing changed."""
        stored = self.job(job_id)
        if stored is None:
            return None
        end = stored.total_records if stored.total_records is not None else stored.highest_index + 1
        job = stored.model_copy(
            update={
                "completed_count": 0,
                "failed_count": 0,
                "skipped_count": 0,
                **Usage().fields(),
                "estimated_cost": Decimal(0),
                "saving_usd": Decimal(0),
                # A cancel (or a reached cap) is not undone by counting again.
                "status": stored.status if stored.status in _STOPPED else "pending",
            }
        )
        for index in range(end):
            raw = self._results.get(result_key(job_id, index))
            if raw is not None:
                result = ResultEvent.model_validate(raw)
                job = apply_result(job, result, self.price_for(result), now)
        if job.outcomes == stored.outcomes:
            return None
        job.updated_at = now
        self._store(job)
        return job
