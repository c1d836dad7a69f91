"""HTTP request and response bodies of /api/v1/batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.task import TaskSpec


class BatchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # (The schema says what the validator below checks: some non-blank character.)
    text: str = Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})
    id: str | None = Field(
        None, description="The record's own id; a whole number is taken as its decimal string."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _whole_number_id(cls, value: Any) -> Any:
        # Database exports often carry numeric ids ({"id": 42}): kept as "42". A bool is
        # not a number here (JSON true is no id).
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float):
            # A fraction, or a whole number past 64 bits (JSON readers take it as a float):
            # its digits cannot be kept exactly.
            got = (
                "a whole number past 64 bits, whose digits JSON readers do not keep"
                if value.is_integer()
                else repr(value)
            )
            raise ValueError(
                "id must be a string or a whole number of at most 64 bits "
                f'(got {got}): send it as a string, e.g. "12345678901234567890123"'
            )
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must be a non-empty string")
        return value


# A job's share of the provider budget while other jobs wait: `high` gets 4 times a
# `normal` job's share, `low` only what no `high` or `normal` record waits for.
Priority = Literal["high", "normal", "low"]


# Which lane runs a job (docs/lanes.md): live calls, the provider's Message Batches API
# (half the price, most batches end within an hour), or chosen by size and deadline.
LaneRequest = Literal["live", "batch", "auto"]


def check_deadline(value: str | None) -> str | None:
    """An ISO 8601 date-time with a date and a time (`2026-12-07T18:00:00Z`)."""
    if value is None:
        return None
    text = value.strip()
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            "deadline must be an ISO 8601 date-time, e.g. 2026-12-07T18:00:00Z"
        ) from None
    if "T" not in text.upper() and " " not in text:
        raise ValueError("deadline must have a time of day, e.g. 2026-12-07T18:00:00Z")
    return text


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[BatchRecord] = Field(min_length=1)
    priority: Priority = Field(
        "normal",
        description="The job's share of the provider budget while other jobs wait: high 4x "
        "normal, low only what nobody else waits for.",
    )
    task: TaskSpec | str | None = Field(
        None,
        description="The job's own task, or the name of a preset (`GET /api/v1/tasks`); "
        "absent: the default Smart Summary & Insight task.",
    )
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Spending cap in USD (default BATCH_MAX_COST_PER_JOB_USD).",
    )
    lane: LaneRequest | None = Field(
        None,
        description="`live` (one call per record, full price), `batch` (the provider's "
        "Message Batches API: half the price, results as each provider batch ends, usually "
        "within an hour) or `auto` (default BATCH_DEFAULT_LANE): the batch lane when the "
        "job would take longer than BATCH_LANE_AUTO_MINUTES live, or with a `deadline`, "
        "the cheapest lane expected to finish by it.",
    )
    deadline: str | None = Field(
        None,
        description="ISO 8601 date-time (`2026-12-07T18:00:00Z`) by which the job should be "
        "done; `auto` picks the cheapest lane expected to make it. A deadline in the past "
        "is refused (422).",
        json_schema_extra={"format": "date-time"},
    )

    @field_validator("deadline")
    @classmethod
    def _deadline_is_iso(cls, value: str | None) -> str | None:
        return check_deadline(value)


class BatchAccepted(BaseModel):
    job_id: str
    status: str
    total_records: int


class RetryRequest(BaseModel):
    """POST /api/v1/batch/{job_id}/retry: which records to send again."""

    model_config = ConfigDict(extra="forbid")

    failed: bool = Field(True, description="Send the records that failed again.")
    skipped: bool = Field(
        False, description="Send the records skipped because the spending cap was reached."
    )


class RetryAccepted(BaseModel):
    """The retry round started: `records` records run again under the same job."""

    job_id: str
    status: str
    retry: int
    records: int
