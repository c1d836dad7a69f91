"""A job's options as a request gives them (`task`, `max_cost_usd`), checked before anything
is produced: a bad task is a 422 naming what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.errors import ApiError
from schemas import JobCreated, TaskSpec
from schemas.http import Priority
from stream_app.core.settings import Settings
from stream_app.jobs.tasks import UnknownModel, UnknownTask, check_task_model, resolve_task
from stream_app.provider.task_schema import UnsupportedSchema


@dataclass(frozen=True)
class JobOptions:
    """What the job's `created` event carries besides its size (a preset is expanded)."""

    task: TaskSpec | None = None
    task_name: str | None = None
    max_cost_usd: float | None = None
    priority: Priority = "normal"

    def created(
        self, job_id: str, total_records: int, created_at: float, owner: str | None
    ) -> JobCreated:
        return JobCreated(
            job_id=job_id,
            total_records=total_records,
            created_at=created_at,
            owner=owner,
            task=self.task,
            task_name=self.task_name,
            max_cost_usd=self.max_cost_usd,
            priority=self.priority,
        )


def job_options(
    task: TaskSpec | str | None,
    max_cost_usd: float | None,
    settings: Settings,
    priority: Priority = "normal",
) -> JobOptions:
    """Raises ApiError 422 `unsupported_schema` (the keyword and where it is),
    `unknown_task` (a preset name that does not exist) or `unknown_model` (a task model
    without a price that is not CLAUDE_MODEL)."""
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
    return JobOptions(spec, name, cap, priority)


def query_options(params: Any) -> dict[str, Any]:
    """Options of a streamed body given as query parameters
    (`?task=<preset>&max_cost_usd=&priority=`)."""
    options: dict[str, Any] = {}
    if "priority" in params:
        options["priority"] = params["priority"]
    if "task" in params:
        options["task"] = params["task"]
    if "max_cost_usd" in params:
        options["max_cost_usd"] = params["max_cost_usd"]
    return options
