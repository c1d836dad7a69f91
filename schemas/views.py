"""HTTP response bodies of /api/v1, as the API returns them (the OpenAPI document is
generated from these and the request models in schemas.http)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.insight import InsightResponse
from schemas.task import TaskResponse, TaskSpec

JobState = Literal["pending", "running", "completed", "cancelled", "budget_exhausted", "failed"]


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `job_not_found`, `validation_error`.")
    message: str = Field(description="For people; names the field or line at fault.")


class ErrorBody(BaseModel):
    """Every 4xx (and 503) answer."""

    error: ErrorDetail


class ResultView(BaseModel):
    """One record's outcome."""

    index: int = Field(ge=0, description="Position of the record in the batch (from 0).")
    success: bool
    response: InsightResponse | TaskResponse | None = Field(
        None,
        description="Present when success is true: the task's fields (the default task's "
        "summary, insights, sentiment, topics, or what a custom task's output_schema asks) "
        "plus `metadata`.",
    )
    error: str | None = Field(None, description="Why the record failed or was skipped.")
    skipped: bool | None = Field(
        None,
        description="true when the job was cancelled, or reached its spending cap, before "
        "the record started.",
    )
    skip_reason: Literal["cancelled", "budget_exhausted"] | None = None
    record_id: str | None = Field(None, description="The record's own `id`, when it had one.")
    input_metadata: dict[str, Any] | None = Field(
        None,
        description="The record's own `metadata` (a CSV row's other columns), when it had any.",
    )
    tokens_used: int = Field(ge=0, description="Every billed token of the record.")
    attempts: int = Field(ge=0, description="Provider calls made for the record.")


class JobSummary(BaseModel):
    """A job's status and counters (timestamps are ISO 8601, UTC; cost in USD)."""

    job_id: str
    status: JobState = Field(
        description="`completed`: every record has an outcome (some may have failed). "
        "`cancelled`: counts keep changing until every record has its outcome."
    )
    total_records: int | None = Field(
        description="null until the job's `created` event is seen (results may come first)."
    )
    completed_count: int = Field(ge=0, description="Records that succeeded.")
    failed_count: int = Field(ge=0)
    skipped_count: int = Field(ge=0, description="Records skipped because of a cancel.")
    total_tokens_used: int = Field(ge=0)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_creation_input_tokens: int = Field(0, ge=0)
    cache_read_input_tokens: int = Field(0, ge=0)
    estimated_cost: float = Field(ge=0, description="USD, rounded to 8 decimals.")
    estimated_cost_usd: str = Field(description='The exact cost, a decimal string ("0.001234").')
    created_at: str | None
    updated_at: str | None
    cancelled_at: str | None = None
    provider: dict[str, Any] | None = Field(
        None, description="While pending or running: the provider's state, as in /ready."
    )
    stalled: bool | None = Field(
        None, description="While pending or running: no outcome for BATCH_STALL_AFTER_SECONDS."
    )
    task: str | None = Field(
        None, description="The job's task: a preset's name, `custom`, or null (the default)."
    )
    model: str | None = Field(None, description="The task's model (null: CLAUDE_MODEL).")
    max_cost_usd: float | None = Field(
        None,
        description="The spending cap; `status` becomes `budget_exhausted` when it is "
        "reached (records not yet sent are skipped; `estimated_cost` is the spend).",
    )
    priority: str = Field(
        "normal", description="`high`, `normal` or `low`: the job's share of the budget."
    )
    lane: Literal["live", "batch", "auto"] = Field(
        "live",
        description="The lane running the job: `live` (one call per record) or `batch` (the "
        "provider's Message Batches API, half the price); `auto` only for a job announced "
        "on batch.jobs without a resolved lane.",
    )
    lane_reason: str | None = Field(
        None, description="Why the job runs in its lane (asked for, or what `auto` weighed)."
    )
    deadline: str | None = Field(None, description="The job's deadline (ISO 8601), if any.")
    provider_batches: list[dict[str, Any]] | None = Field(
        None,
        description="Batch lane: the job's provider message batches, each `{id, "
        "processing_status, request_counts}` (as the provider last reported them; `ended` "
        "once the service is done with it), with a `note` when the service ended it "
        "otherwise (not found at the provider, cancelled to make the deadline).",
    )
    moved_to_live_lane: int | None = Field(
        None,
        ge=0,
        description="Batch lane: how many of the job's records were sent to the live lane "
        "to make its deadline.",
    )
    saving_usd: str = Field(
        "0",
        description="What the job's batch-lane results would have cost at live prices, less "
        'what they cost (USD, a decimal string; "0" on the live lane).',
    )
    stale: bool = Field(
        False,
        description="true when read from a standby replica because the worker owning the "
        "job did not answer (it died and the group has not rebalanced yet): the counts may "
        "be behind by the changes the replica had not applied.",
    )
    as_of: str | None = Field(
        None, description="When `stale`: the job's last change the replica holds (ISO 8601)."
    )
    retries: int = Field(0, ge=0, description="Retry rounds asked for (POST .../retry); 0: none.")


class JobStatusResponse(JobSummary):
    results: list[ResultView] = Field(description="In index order; `?offset=&limit=` page them.")


class TenantBudget(BaseModel):
    """The caller's budget for the calendar month (TENANT_BUDGETS), USD."""

    tenant: str
    budget_usd: float = Field(ge=0)
    spent_usd: float = Field(ge=0, description="Billed this month, as batch.spend was read.")
    month: str = Field(description="YYYY-MM, UTC.")
    exhausted: bool = Field(description="true: the tenant's new jobs are refused with 402.")


class JobList(BaseModel):
    jobs: list[JobSummary]
    count: int = Field(ge=0)
    tenant_budget: TenantBudget | None = Field(
        None, description="With TENANT_BUDGETS: the caller's budget this month."
    )
    stale: bool = Field(
        False,
        description="true when a worker owning job partitions did not answer: its jobs come "
        "from standby replicas (each marked `stale`), and jobs of partitions the worker "
        "asked holds no replica of are missing.",
    )


class ResultsPage(BaseModel):
    job_id: str
    status: JobState
    total_records: int | None
    offset: int = Field(ge=0)
    limit: int = Field(ge=0)
    next_offset: int | None = Field(description="The index to ask for next; null at the end.")
    results: list[ResultView]
    stale: bool = Field(False, description="As in the status: read from a standby replica.")


class JobDeletedView(BaseModel):
    """DELETE /api/v1/batch/{job_id}: the job is gone."""

    job_id: str
    status: Literal["deleted"] = "deleted"


class Health(BaseModel):
    status: Literal["ok", "failing"]
    reason: str | None = None


class Estimate(BaseModel):
    """What a batch would cost and take (POST /api/v1/batch/estimate); nothing runs."""

    records: int = Field(ge=0)
    input_tokens: int = Field(ge=0, description="Every prompt token, cached or not.")
    output_tokens: int = Field(ge=0)
    cache_creation_input_tokens: int = Field(ge=0, description="Of input_tokens: cache writes.")
    cache_read_input_tokens: int = Field(ge=0, description="Of input_tokens: cache reads.")
    cost_usd: float = Field(ge=0, description="USD, with prompt caching as it will run.")
    cost_usd_low: float = Field(0, ge=0, description="USD: the low end of the likely range.")
    cost_usd_high: float = Field(0, ge=0, description="USD: the high end of the likely range.")
    cost_usd_without_caching: float = Field(ge=0)
    max_cost_usd: float | None = Field(description="The job's spending cap, if any.")
    duration_seconds: float = Field(
        ge=0,
        description="Live lane: backlog ahead plus the job, at the budget's and concurrency's "
        "pace. Batch lane: the provider's typical time for a batch (3600).",
    )
    output_basis: str = Field(
        description="`history of N` (records of the same task) or `schema` (a guess)."
    )
    lane: Literal["live", "batch"] = Field(
        "live",
        description="The lane priced: the body's `lane`, `auto` resolved as a submit of the "
        "same body would be now. The batch lane costs the Message Batches rates (half).",
    )
    lane_reason: str = Field("", description="Why that lane (as the job's status would say).")
    live_cost_usd: float = Field(0, ge=0, description="USD: the same job on the live lane.")
    saving_usd: float = Field(
        0, ge=0, description="USD: live_cost_usd minus cost_usd (0 on the live lane)."
    )
    input_basis: str = Field(
        "characters",
        description="`counted` (the provider's token counting, every record), `counted "
        "sample of N`, or `characters` (no token counting).",
    )
    task: str
    model: str


class TaskPresets(BaseModel):
    default: str = Field(description="The task of a job that names none.")
    presets: dict[str, TaskSpec]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description='broker, assignment, storage: "ok" or why not.')
    partitions: list[int] = Field(description="The batch.records partitions this worker owns.")
    provider: dict[str, Any] | None = Field(None, description="The provider's state.")
