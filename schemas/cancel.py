"""The `cancelled`, `deleted` and `retried` events on `batch.jobs`, and reading any event of
that topic."""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, Field

from schemas.events import JobCreated


class JobCancelled(BaseModel):
    """`batch.jobs`, key job_id: stop the job. Records that have not started are skipped
    (an outcome marked `skipped` reaches `batch.results` for each); calls in flight finish."""

    type: Literal["cancelled"] = "cancelled"
    job_id: str = Field(min_length=1, max_length=200)
    cancelled_at: float | None = None


class JobDeleted(BaseModel):
    """`batch.jobs`, key job_id: forget the job. Every worker removes what it keeps of it
    (tombstones in every table, the SQLite mirror's rows); a job still running is cancelled
    first. Records and results already on `batch.records` / `batch.results` stay until
    those topics' retention."""

    type: Literal["deleted"] = "deleted"
    job_id: str = Field(min_length=1, max_length=200)
    deleted_at: float | None = None
    # "request" (DELETE /api/v1/batch/{job_id}) or "retention" (BATCH_RETENTION_DAYS).
    reason: Literal["request", "retention"] | None = None


class JobRetried(BaseModel):
    """`batch.jobs`, key job_id: some records of a finished job are sent again (attempt
    `retry`, counted from 1); their new outcomes replace the old ones."""

    type: Literal["retried"] = "retried"
    job_id: str = Field(min_length=1, max_length=200)
    retry: int = Field(ge=1)
    indexes: list[int] = Field(default_factory=list)
    retried_at: float | None = None


JobEvent = JobCreated | JobCancelled | JobDeleted | JobRetried


def parse_job_event(value: bytes) -> JobEvent:
    """One `batch.jobs` value. `type` defaults to `created` (events written before there
    were other types carry none). Raises pydantic's ValidationError (bad JSON included)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "cancelled":
            return JobCancelled.model_validate(data)
        if kind == "deleted":
            return JobDeleted.model_validate(data)
        if kind == "retried":
            return JobRetried.model_validate(data)
    return JobCreated.model_validate_json(value)
