"""HTTP request and response bodies of /api/v1/batch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.task import TaskSpec


class BatchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
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


class BatchAccepted(BaseModel):
    job_id: str
    status: str
    total_records: int
