"""What a job asks of each record: its task (instructions, output schema, model, max_tokens)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.insight import ResponseMetadata

MAX_INSTRUCTIONS_CHARS = 100_000
MAX_SCHEMA_CHARS = 100_000


class TaskSpec(BaseModel):
    """A job's own question. Every record of the job is sent with these instructions and
    must answer with an object that validates against `output_schema` (a JSON Schema of
    an object, within what structured outputs accept: see `stream_app.provider.task_schema`)."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(
        min_length=1,
        max_length=MAX_INSTRUCTIONS_CHARS,
        description="What to extract or decide for each record (sent as the system prompt).",
    )
    output_schema: dict[str, Any] = Field(
        description="JSON Schema of the object every record's `response` must be."
    )
    model: str | None = Field(
        None, min_length=1, max_length=100, description="Model id; default CLAUDE_MODEL."
    )
    max_tokens: int | None = Field(
        None, ge=16, le=64_000, description="Output room per call; default CLAUDE_MAX_TOKENS."
    )


class TaskResponse(BaseModel):
    """A custom task's answer: the fields its output schema asked for, plus `metadata`."""

    model_config = ConfigDict(extra="allow")

    metadata: ResponseMetadata
