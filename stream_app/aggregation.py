"""Folding job events and record results into a job's status: pure functions, no Kafka."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from schemas import JobCreated, ResultEvent
from stream_app.pricing import Price

JobState = Literal["pending", "running", "completed", "cancelled", "failed"]


class JobStatus(BaseModel):
    """One job's counters, as kept in the job-status table (one value per job)."""

    job_id: str
    status: JobState = "pending"
    # None until the job's "created" event is seen: results may overtake it.
    total_records: int | None = None
    completed_count: int = 0
    failed_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost: Decimal = Decimal(0)
    created_at: float | None = None
    updated_at: float | None = None
    owner: str | None = None
    # Lets readers list results before the "created" event has told them the total.
    highest_index: int = -1

    @property
    def total_tokens_used(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def outcomes(self) -> int:
        return self.completed_count + self.failed_count


def _settle(job: JobStatus) -> JobStatus:
    if job.status in ("cancelled", "failed"):
        return job
    if job.total_records is not None and job.outcomes >= job.total_records:
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
    job.updated_at = now
    return _settle(job)


def apply_result(job: JobStatus | None, result: ResultEvent, price: Price, now: float) -> JobStatus:
    """Count one record's outcome. The caller guarantees each (job, index) comes once."""
    job = job.model_copy() if job is not None else JobStatus(job_id=result.job_id, created_at=now)
    if result.success:
        job.completed_count += 1
    else:
        job.failed_count += 1
    job.input_tokens += result.input_tokens
    job.output_tokens += result.output_tokens
    job.estimated_cost += price.cost(result.input_tokens, result.output_tokens)
    job.highest_index = max(job.highest_index, result.index)
    job.updated_at = now
    return _settle(job)


def result_out_of_range(job: JobStatus | None, result: ResultEvent) -> bool:
    return job is not None and job.total_records is not None and result.index >= job.total_records
