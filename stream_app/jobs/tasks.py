"""Which task a job has: the default Smart Summary & Insight task, a preset by name, or a
custom task (instructions and an output schema), and whether its model is one the service
can price. Pure logic (no Kafka, no HTTP); what a call of the task sends is
stream_app.provider.request.
"""

from __future__ import annotations

from schemas import TaskSpec
from stream_app.core.exceptions import InsightStreamError
from stream_app.provider.pricing import is_known_model
from stream_app.provider.request import DEFAULT_TASK_NAME
from stream_app.provider.task_schema import check_output_schema


class UnknownTask(InsightStreamError):
    """A task named by a preset that does not exist."""


class UnknownModel(InsightStreamError):
    """A task names a model the service has no price for (and is not CLAUDE_MODEL)."""


def check_task_model(model: str | None, default_model: str) -> None:
    """Raise UnknownModel unless `model` is None, the configured CLAUDE_MODEL, or a model
    genai-prices has a price for (stream_app.provider.pricing). A job's own model must be
    priced (its cap and costs depend on it), and a model the provider does not serve would
    make every call of the job answer 404, which stops the worker's line for every job
    (stream_app/provider/breaker.py) instead of failing this one."""
    if model is None or model == default_model or is_known_model(model):
        return
    raise UnknownModel(
        f"task.model: {model!r} is not a model with a known price (a current Claude model "
        f"id such as 'claude-sonnet-5-5', or CLAUDE_MODEL {default_model!r})"
    )


PRESETS: dict[str, TaskSpec] = {
    "support-ticket-triage": TaskSpec(
        instructions=(
            "You triage customer support tickets. For the ticket, name the product area it "
            "is about, how urgent it is for the customer (low: a question or a wish; "
            "medium: something does not work but there is a way around it; high: the "
            "customer cannot work, loses money or data, or threatens to leave), whether "
            "the customer asks for a refund, and a one-sentence summary."
        ),
        output_schema={
            "type": "object",
            "properties": {
                "product_area": {"type": "string", "description": "e.g. billing, export"},
                "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
                "refund_requested": {"type": "boolean"},
                "summary": {"type": "string"},
            },
            "required": ["product_area", "urgency", "refund_requested", "summary"],
            "additionalProperties": False,
        },
    ),
    "review-insights": TaskSpec(
        instructions=(
            "You read product reviews. For the review, give the star rating it implies "
            "(1 to 5), the features the reviewer asks for (none when none), and a "
            "one-sentence summary."
        ),
        output_schema={
            "type": "object",
            "properties": {
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "feature_requests": {"type": "array", "items": {"type": "string"}},
                "summary": {"type": "string"},
            },
            "required": ["rating", "feature_requests", "summary"],
            "additionalProperties": False,
        },
    ),
}


def resolve_task(task: TaskSpec | str | None) -> tuple[TaskSpec | None, str | None]:
    """(spec, preset name) for what a request named; raises UnknownTask or UnsupportedSchema.
    None stands for the default task."""
    if task is None:
        return None, None
    if isinstance(task, str):
        if task == DEFAULT_TASK_NAME:
            return None, None
        if task not in PRESETS:
            raise UnknownTask(
                f"task: no preset {task!r} (presets: {', '.join(sorted(PRESETS))}, "
                f"{DEFAULT_TASK_NAME})"
            )
        return PRESETS[task], task
    check_output_schema(task.output_schema)
    return task, None
