"""A job's options as a request gives them (`task`, `max_cost_usd`, `priority`, `lane`,
`deadline`), checked before anything is produced: a bad task is a 422 naming what is wrong.
The lane of an `auto` job is chosen when its size is known (`JobOptions.created`, by
`stream_app.jobs.lanes.choose_lane`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError, describe
from schemas import BatchRequest, JobCreated, TaskSpec
from schemas.http import LaneRequest, Priority
from stream_app.core.settings import Settings
from stream_app.jobs.lanes import LaneChoice, LivePace, choose_lane, parse_deadline, with_zone
from stream_app.jobs.tasks import UnknownModel, UnknownTask, check_task_model, resolve_task
from stream_app.provider.task_schema import UnsupportedSchema
from stream_app.running.service import Service


@dataclass(frozen=True)
class JobOptions:
    """What the job's `created` event carries besides its size (a preset is expanded)."""

    task: TaskSpec | None = None
    task_name: str | None = None
    max_cost_usd: float | None = None
    priority: Priority = "normal"
    lane: LaneRequest = "auto"
    deadline: str | None = None
    # For `auto`: BATCH_LANE_AUTO_MINUTES and the live lane's budget and backlog.
    auto_minutes: float = 30.0
    pace: LivePace | None = None

    def lane_choice(self, total_records: int, now: float) -> LaneChoice:
        """The lane a job of `total_records` records with these options runs in, and why
        (`now`: Unix time): what its `created` event says, and what an estimate prices."""
        return choose_lane(
            self.lane,
            total_records,
            self.pace or LivePace(requests_per_minute=50),
            auto_minutes=self.auto_minutes,
            deadline=parse_deadline(self.deadline) if self.deadline is not None else None,
            now=now,
        )

    def created(
        self, job_id: str, total_records: int, created_at: float, owner: str | None
    ) -> JobCreated:
        """The job's `created` event; an `auto` lane is resolved here, by its size."""
        choice = self.lane_choice(total_records, created_at)
        return JobCreated(
            job_id=job_id,
            total_records=total_records,
            created_at=created_at,
            owner=owner,
            task=self.task,
            task_name=self.task_name,
            max_cost_usd=self.max_cost_usd,
            priority=self.priority,
            lane=choice.lane,
            lane_reason=choice.reason,
            deadline=self.deadline,
        )


def job_options(
    task: TaskSpec | str | None,
    max_cost_usd: float | None,
    settings: Settings,
    priority: Priority = "normal",
    *,
    lane: LaneRequest | None = None,
    deadline: str | None = None,
    pace: LivePace | None = None,
) -> JobOptions:
    """`lane` None: BATCH_DEFAULT_LANE; `pace`: the live lane's budget and backlog ahead
    (None: CLAUDE_REQUESTS_PER_MINUTE and no backlog). Raises ApiError 422
    `unsupported_schema` (the keyword and where it is), `unknown_task` (a preset name that
    does not exist), `unknown_model` (a task model without a price that is not
    CLAUDE_MODEL) or `validation_error` (a deadline already past)."""
    try:
        spec, name = resolve_task(task)
    except UnsupportedSchema as exc:
        raise ApiError(422, "unsupported_schema", str(exc)) from None
    except UnknownTask as exc:
        raise ApiError(422, "unknown_task", str(exc)) from None
    try:
        check_task_model(spec.model if spec is not None else None, settings.claude_model)
    except UnknownModel as exc:
        raise ApiError(422, "unknown_model", str(exc)) from None
    cap = max_cost_usd if max_cost_usd is not None else settings.batch_max_cost_per_job_usd
    if deadline is not None:
        if parse_deadline(deadline) <= time.time():
            raise ApiError(422, "validation_error", f"deadline: {deadline} is already past")
        deadline = with_zone(deadline)
    return JobOptions(
        spec,
        name,
        cap,
        priority,
        lane=lane or settings.batch_default_lane,
        deadline=deadline,
        auto_minutes=settings.batch_lane_auto_minutes,
        pace=pace or LivePace(requests_per_minute=settings.claude_requests_per_minute),
    )


def request_options(batch: BatchRequest, service: Service) -> JobOptions:
    """`job_options` of a submitted body, the live lane's pace read from this worker."""
    return job_options(
        batch.task,
        batch.max_cost_usd,
        service.settings,
        batch.priority,
        lane=batch.lane,
        deadline=batch.deadline,
        pace=live_pace(service),
    )


def live_pace(service: Service) -> LivePace:
    """The cluster's live budget (CLAUDE_REQUESTS_PER_MINUTE) and the live-lane records
    waiting ahead: this worker's unfinished live-lane jobs' records without an outcome,
    scaled to the cluster by the share of partitions it owns (a job's records spread over
    every partition)."""
    settings = service.settings
    owned = len(service.owned_partitions()) or settings.kafka_partitions
    backlog = sum(
        max(0, (job.total_records or 0) - job.outcomes)
        for job in service.pipeline.jobs()
        if job.status in ("pending", "running") and job.lane != "batch"
    )
    return LivePace(
        requests_per_minute=settings.claude_requests_per_minute,
        backlog_records=round(backlog * settings.kafka_partitions / owned),
    )


def with_query_options(batch: BatchRequest, params: Any) -> BatchRequest:
    """A JSON body's options with those given as query parameters (`?lane=batch`, as the
    web page sends them) added: the body's own value stands; a query value that differs
    from it is refused. Raises ApiError 422 `validation_error` (`query: ...`) for a bad
    value or a conflict."""
    query = query_options(params)
    if not query:
        return batch
    try:
        # Read as the body's fields are, so that `5` and `5.0`, or one deadline written
        # two ways, are the same value.
        checked = BatchRequest.model_validate({**query, "records": [{"text": "-"}]})
    except ValidationError as exc:
        raise ApiError(422, "validation_error", f"query: {describe(exc)}") from None
    given = batch.model_fields_set
    for name, value in query.items():
        if name in given and not _same(name, getattr(batch, name), getattr(checked, name)):
            raise ApiError(
                422,
                "validation_error",
                f"query: {name}={value!r} differs from the body's {name}; give it once",
            )
    extra = [name for name in query if name not in given]
    if not extra:
        return batch
    return batch.model_copy(update={name: getattr(checked, name) for name in extra})


def _same(name: str, body: Any, query: Any) -> bool:
    """Whether a body's option and the query's are one value (a deadline: one instant)."""
    if name == "deadline" and body is not None and query is not None:
        try:
            return bool(parse_deadline(str(body)) == parse_deadline(str(query)))
        except ValueError:
            return False
    return bool(body == query)


# The job options a query may carry (the body's names).
_QUERY_OPTIONS = ("lane", "deadline", "priority", "task", "max_cost_usd")


def query_options(params: Any) -> dict[str, Any]:
    """Options of a streamed body given as query parameters
    (`?task=<preset>&max_cost_usd=&priority=&lane=&deadline=`). Raises ApiError 422 for
    an option given more than once (`?lane=batch&lane=live`: which one was meant?)."""
    if hasattr(params, "getlist"):
        for name in _QUERY_OPTIONS:
            if len(params.getlist(name)) > 1:
                raise ApiError(
                    422, "validation_error", f"query: {name} is given more than once; give it once"
                )
    return {name: params[name] for name in _QUERY_OPTIONS if name in params}
