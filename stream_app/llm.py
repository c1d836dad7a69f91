"""The Claude call for one record: structured output through the official SDK."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anthropic
import httpx2
import orjson
from anthropic.types import JSONOutputFormatParam
from pydantic import ValidationError

from schemas import BatchRecord, Insight
from stream_app.exceptions import InvalidModelOutput

SYSTEM_PROMPT = (
    "You analyse business texts (support tickets, reviews, incident reports, call notes). "
    "For the text you are given, write a faithful summary of one or two sentences, up to "
    "five concrete insights, the overall sentiment and a few topic keywords. Use only what "
    "the text says."
)
# Structured outputs take a JSON schema; the SDK rewrites pydantic's schema into the
# subset the API accepts (constraints move into descriptions).
INSIGHT_OUTPUT_FORMAT: JSONOutputFormatParam = {
    "type": "json_schema",
    "schema": anthropic.transform_schema(Insight),
}


_SCHEMA_CHARS = len(orjson.dumps(INSIGHT_OUTPUT_FORMAT))


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Analysis:
    insight: Insight
    usage: Usage
    headers: Mapping[str, str]


class InvalidOutputWithUsage(InvalidModelOutput):
    """The call was billed, but its output did not validate."""

    def __init__(self, message: str, usage: Usage, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.usage = usage
        self.headers = headers


class InsightClient:
    """One attempt at analysing one record. Retries and pacing live in the caller."""

    def __init__(self, client: anthropic.AsyncAnthropic, *, model: str, max_tokens: int) -> None:
        self._client = client
        self.model = model
        self._max_tokens = max_tokens

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def request_chars(self, record: BatchRecord) -> int:
        """Characters the request sends, for estimating its input tokens before it goes."""
        return len(SYSTEM_PROMPT) + len(record.text) + _SCHEMA_CHARS

    async def analyze(self, record: BatchRecord) -> Analysis:
        # The raw response carries the provider's rate-limit headers for the budget.
        raw = await self._client.messages.with_raw_response.create(
            model=self.model,
            max_tokens=self._max_tokens,
            system=SYSTEM_PROMPT,
            messages=[{"role": "user", "content": record.text}],
            output_config={"format": INSIGHT_OUTPUT_FORMAT},
        )
        message = await raw.parse()
        usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
        text = "".join(block.text for block in message.content if block.type == "text")
        try:
            insight = Insight.model_validate(orjson.loads(text))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise InvalidOutputWithUsage(
                f"structured output did not validate: {_first_line(exc)}", usage, raw.headers
            ) from exc
        return Analysis(insight, usage, raw.headers)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def build_anthropic_client(
    *,
    api_key: str,
    base_url: str | None,
    timeout: float,
    wrap_transport: Callable[[httpx2.AsyncBaseTransport], httpx2.AsyncBaseTransport] | None = None,
) -> anthropic.AsyncAnthropic:
    """`wrap_transport` may wrap the HTTP transport (the metrics count calls there)."""
    http_client = None
    if wrap_transport is not None:
        inner = httpx2.AsyncHTTPTransport(limits=anthropic.DEFAULT_CONNECTION_LIMITS)
        http_client = anthropic.DefaultAsyncHttpxClient(transport=wrap_transport(inner))
    # max_retries=0: every attempt must pass through our rate budget, so we retry ourselves.
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0, http_client=http_client
    )
