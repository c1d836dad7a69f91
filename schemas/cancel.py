"""The `cancelled` event on `batch.jobs`, and reading any event of that topic."""

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


JobEvent = JobCreated | JobCancelled


def parse_job_event(value: bytes) -> JobEvent:
    """One `batch.jobs` value. `type` defaults to `created` (events written before there
    were other types carry none). Raises pydantic's ValidationError (bad JSON included)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("type") == "cancelled":
        return JobCancelled.model_validate(data)
    return JobCreated.model_validate_json(value)
