"""Topic payloads. These are public contracts: plain JSON, documented in the README."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.http import BatchRecord, LaneRequest, Priority, check_deadline
from schemas.insight import InsightResponse
from schemas.task import TaskResponse, TaskSpec

SkipReason = Literal["cancelled", "budget_exhausted"]


class JobCreated(BaseModel):
    """`batch.jobs`, key job_id: announces a job and how many records it has."""

    type: Literal["created"] = "created"
    job_id: str = Field(min_length=1, max_length=200)
    total_records: int = Field(ge=0)
    created_at: float | None = None
    owner: str | None = None
    # Share of the provider budget while other jobs wait (stream_app.jobs.scheduler).
    priority: Priority | None = None
    # The job's own task (a preset is expanded at submit, so every worker reads the same
    # thing); absent: the default Smart Summary & Insight task.
    task: TaskSpec | None = None
    # The preset the task came from, when it did (for people and the estimate's history).
    task_name: str | None = Field(None, max_length=100)
    # Spending cap in USD: records not yet sent once it is reached are skipped.
    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    # The submit's Idempotency-Key header and its request's SHA-256 (hex), when it had
    # one: every worker learns the key -> job mapping from here (stream_app.jobs.idempotency).
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    request_hash: str | None = Field(None, max_length=64)
    # The job's lane (docs/lanes.md): the API writes the lane it chose for `auto` ("live"
    # or "batch") with `lane_reason`; absent: BATCH_DEFAULT_LANE. `deadline`: ISO 8601.
    lane: LaneRequest | None = None
    lane_reason: str | None = Field(None, max_length=500)
    deadline: str | None = None

    @field_validator("deadline")
    @classmethod
    def _deadline_is_iso(cls, value: str | None) -> str | None:
        return check_deadline(value)


class RecordEvent(BaseModel):
    """`batch.records` (or `batch.records.bulk`, for big jobs): one record of one job."""

    job_id: str = Field(min_length=1, max_length=200)
    index: int = Field(ge=0)
    record: BatchRecord
    # The job's tenant and priority, for the scheduler; when absent, the job's "created"
    # event on batch.jobs tells, else the record counts as `normal` of no tenant.
    owner: str | None = None
    priority: Priority | None = None
    # True: the job's `created` event is published after its last record (the API does so,
    # so a submit that fails halfway never runs). Such a record waits for its job's
    # announcement and is dead-lettered, never run, if none comes (stream_app.jobs.job_rules).
    created_follows: bool | None = None
    # Sent again by POST /api/v1/batch/{job_id}/retry: the retry round (1, 2, ...). Its
    # outcome replaces the record's earlier one.
    retry: int | None = Field(None, ge=1)
    # "live": the batch lane sent this record back to the live lane (its provider batches
    # kept expiring or failing): the process agent calls Claude for it whatever its job's lane.
    # "batch": its job runs on the batch lane (set at submit): handed over to the lane as
    # soon as it is read, before the job's `created` event is.
    lane: Literal["live", "batch"] | None = None


class ResultEvent(BaseModel):
    """`batch.results`, key job_id: the one outcome of one record."""

    model_config = ConfigDict(extra="ignore")

    job_id: str = Field(min_length=1, max_length=200)
    index: int = Field(ge=0)
    success: bool
    # The default task's answer, or a custom task's fields (plus metadata).
    response: InsightResponse | TaskResponse | None = None
    error: str | None = None
    # True when the record was not processed: its job was cancelled, or its spending cap
    # was reached, before the record's first call (`skip_reason` says which).
    skipped: bool | None = None
    skip_reason: SkipReason | None = None
    # The model that billed the tokens below (prices differ per model); None: CLAUDE_MODEL.
    model: str | None = None
    record_id: str | None = None
    # The record's own metadata (a JSON record's `metadata`, a CSV row's other columns),
    # carried to its outcome so results and exports keep it; absent when it had none.
    input_metadata: dict[str, Any] | None = None
    # Every billed attempt of this record, successful or not. Cache writes and reads are
    # billed apart from input_tokens; cache_creation_1h_input_tokens is the part of the
    # writes that went to the 1-hour cache (priced 2x input instead of 1.25x).
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cache_creation_input_tokens: int = Field(0, ge=0)
    cache_read_input_tokens: int = Field(0, ge=0)
    cache_creation_1h_input_tokens: int = Field(0, ge=0)
    attempts: int = Field(0, ge=0)
    finished_at: float | None = None
    # The retry round whose outcome this is (absent: the first run); a later round's outcome
    # replaces an earlier one, and the stored result then counts every round's tokens.
    retry: int | None = Field(None, ge=1)
    # Where the record was read in `batch.records` (a retry reads it back from there).
    record_partition: int | None = Field(None, ge=0)
    record_offset: int | None = Field(None, ge=0)
    # "batch": answered through the provider's Message Batches API, its tokens billed at
    # the batch rates (half the live price); absent or "live": a live call.
    lane: Literal["live", "batch"] | None = None

    @property
    def tokens_used(self) -> int:
        """Every billed token: input, output, cache writes and cache reads."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class DeadLetter(BaseModel):
    """`batch.dlq`: a message that could not be parsed or validated, with the reason."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    reason: str
    at: float
    extra: dict[str, Any] = Field(default_factory=dict)
