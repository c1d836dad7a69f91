"""What Claude is asked to produce for one record, and what a result carries back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Insight(BaseModel):
    """The structured output requested from Claude (sent as a JSON schema)."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(description="One or two sentences that summarise the text.")
    insights: list[str] = Field(
        description="Up to five short, concrete observations a reader should act on or know."
    )
    sentiment: Literal["positive", "neutral", "negative", "mixed"] = Field(
        description="Overall sentiment of the text."
    )
    topics: list[str] = Field(description="A few keywords naming what the text is about.")


class ResponseMetadata(BaseModel):
    # Every billed token of the record (cache writes and reads included).
    tokens_used: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    model: str
    attempts: int
    latency_ms: int


class InsightResponse(Insight):
    metadata: ResponseMetadata
