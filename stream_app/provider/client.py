"""The Claude call for one record: structured output through the official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import orjson
from anthropic.types import JSONOutputFormatParam
from pydantic import ValidationError

from schemas import BatchRecord, Insight, TaskSpec
from stream_app.core.exceptions import UnreadableAnswer, first_line
from stream_app.provider.request import DEFAULT_INSTRUCTIONS, PreparedTask, prepare_task
from stream_app.provider.usage import Usage

# The default task's instructions and output format (stream_app.jobs.tasks builds the prompt).
SYSTEM_PROMPT = DEFAULT_INSTRUCTIONS
# Structured outputs take a JSON schema; the SDK rewrites pydantic's schema into the
# subset the API accepts (constraints move into descriptions).
INSIGHT_OUTPUT_FORMAT: JSONOutputFormatParam = {
    "type": "json_schema",
    "schema": anthropic.transform_schema(Insight),
}


# The SDK's own rule for a call that does not stream (anthropic-sdk-python,
# `_calculate_nonstreaming_timeout`): the slowest a model writes is 128,000 output tokens
# an hour, so a call with room for N tokens may take N * 3600 / 128,000 s before it answers.
SLOWEST_OUTPUT_TOKENS_PER_SECOND = 128_000 / 3600
CONNECT_TIMEOUT_SECONDS = 5.0

# The canary (stream_app.provider.breaker): a minimal request that depends on no record,
# sent when a record keeps failing as the probe, to tell its own fault from an outage.
# About 10 input tokens and 1 output token: ~$0.00005 at Sonnet prices.
CANARY_TEXT = "ping"
CANARY_MAX_TOKENS = 1


def call_timeout_seconds(max_tokens: int, base_seconds: float) -> float:
    """How long one call with room for `max_tokens` output tokens may take (s):
    CLAUDE_TIMEOUT_SECONDS for the prompt and the wait, plus the time the whole output can
    take at the slowest pace the provider's SDK allows for (max_tokens / 35.6 tokens/s).
    A call cut off earlier would fail its record after the provider did (and billed) the
    work; a longer wait costs nothing, the call takes a concurrent slot, not money."""
    return base_seconds + max_tokens / SLOWEST_OUTPUT_TOKENS_PER_SECOND


@dataclass(frozen=True)
class Reply:
    """One answered call, as the provider gave it: what it means is decided elsewhere
    (`stream_app.provider.answers`)."""

    text: str
    stop_reason: str | None
    usage: Usage
    headers: Mapping[str, str]
    max_tokens: int


class InsightClient:
    """One attempt at analysing one record. Retries and pacing live in the caller."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        max_tokens: int,
        max_tokens_ceiling: int | None = None,
        timeout_seconds: float = 60.0,
    ) -> None:
        self._client = client
        # CLAUDE_TIMEOUT_SECONDS: the part of each call's timeout that does not grow with
        # its max_tokens (call_timeout_seconds).
        self.timeout_seconds = timeout_seconds
        self.model = model
        self._max_tokens = max_tokens
        # A reply cut off at max_tokens is retried once with this much room.
        self.max_tokens_ceiling = max(max_tokens, max_tokens_ceiling or max_tokens)
        # The task of records whose job has none of its own.
        self.default_task = prepare_task(
            None, name=None, default_model=model, default_max_tokens=max_tokens
        )

    def prepare(self, spec: TaskSpec | None, name: str | None = None) -> PreparedTask:
        """A job's task with this client's defaults (model, max_tokens)."""
        if spec is None:
            return self.default_task
        return prepare_task(
            spec, name=name, default_model=self.model, default_max_tokens=self._max_tokens
        )

    def ceiling_for(self, task: PreparedTask) -> int:
        return max(task.max_tokens, self.max_tokens_ceiling)

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def request_chars(self, record: BatchRecord, task: PreparedTask | None = None) -> int:
        """Characters the request sends, for estimating its input tokens before it goes."""
        return (task or self.default_task).request_chars(record.text)

    async def analyze(
        self, record: BatchRecord, max_tokens: int | None = None, task: PreparedTask | None = None
    ) -> Reply:
        """Raises the SDK's APIStatusError / APIConnectionError (APITimeoutError after
        `call_timeout_seconds(max_tokens, CLAUDE_TIMEOUT_SECONDS)`) when the call is refused
        or does not arrive; anything else the answer holds is in the Reply."""
        task = task or self.default_task
        room = max_tokens or task.max_tokens
        timeout = httpx2.Timeout(
            call_timeout_seconds(room, self.timeout_seconds), connect=CONNECT_TIMEOUT_SECONDS
        )
        # The raw response carries the provider's rate-limit headers for the budget.
        raw = await self._client.messages.with_raw_response.create(
            **task.request(record.text, room), timeout=timeout
        )
        message = read_message(await raw.read(), raw.http_response)
        text = "".join(
            block["text"]
            for block in message["content"]
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        stop_reason = message.get("stop_reason")
        return Reply(
            text,
            stop_reason if isinstance(stop_reason, str) else None,
            Usage.from_api(message.get("usage")),
            raw.headers,
            room,
        )

    async def canary(self, model: str) -> Usage:
        """One minimal call (CANARY_TEXT, CANARY_MAX_TOKENS, no system prompt, no output
        format) to `model`: whether the provider answers at all. Returns the billed usage
        (any HTTP 200 counts as an answer, whatever its content). Raises the SDK's
        APIStatusError / APIConnectionError like `analyze`."""
        timeout = httpx2.Timeout(
            call_timeout_seconds(CANARY_MAX_TOKENS, self.timeout_seconds),
            connect=CONNECT_TIMEOUT_SECONDS,
        )
        message = await self._client.messages.create(
            model=model,
            max_tokens=CANARY_MAX_TOKENS,
            messages=[{"role": "user", "content": CANARY_TEXT}],
            timeout=timeout,
        )
        return Usage.from_api(message.usage)

    async def count_prompt_tokens(
        self, texts: Sequence[str], task: PreparedTask | None = None, *, concurrency: int = 8
    ) -> list[int]:
        """Prompt tokens (uncached input, cache writes and reads together) a call of each
        text would send, from the provider's token-counting endpoint
        (`messages.count_tokens`: free, not billed, rate-limited apart from messages).
        Raises the SDK's APIStatusError / APIConnectionError."""
        task = task or self.default_task
        slots = asyncio.Semaphore(concurrency)

        async def one(text: str) -> int:
            request = task.request(text)
            async with slots:
                counted = await self._client.messages.count_tokens(
                    model=request["model"],
                    system=request["system"],
                    messages=request["messages"],
                    output_config=request["output_config"],
                    timeout=self.timeout_seconds,
                )
            return counted.input_tokens

        return list(await asyncio.gather(*(one(text) for text in texts)))


def read_message(body: bytes, reply: Any) -> dict[str, Any]:
    """The Messages API answer `body` (of the HTTP response `reply`) as its JSON object,
    with `content` a list. Raises UnreadableAnswer when it is not one (a proxy's error
    page, a truncated body, another API's answer).

    Read as JSON rather than through the SDK's `parse()`: the fields read here (`content`'s
    text blocks, `stop_reason`, `usage`) are the same, and building the SDK's models cost
    about 0.5 ms of CPU per call (bench/README.md, "Profiling the worker"), a sixth of the
    worker's whole cost per record."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = None
    if (
        not isinstance(message, dict)
        or message.get("type") != "message"
        or not isinstance(message.get("content"), list)
    ):
        raise UnreadableAnswer(_not_a_message(reply))
    return message


def _not_a_message(reply: Any) -> str:
    """What came instead of a message: status, content type and the body's first 80
    characters (a proxy's error page, a truncated answer)."""
    kind = reply.headers.get("content-type", "no content type")
    start = reply.text[:80].replace("\n", " ")
    return (
        f"the provider's answer is not a message (HTTP {reply.status_code}, {kind}: "
        f"{start!r}); check ANTHROPIC_BASE_URL points at the Messages API"
    )


def parse_insight(text: str) -> dict[str, Any] | str:
    """The default task's structured output, or why it is not one (first line of the error)."""
    try:
        return Insight.model_validate(orjson.loads(text)).model_dump()
    except (orjson.JSONDecodeError, ValidationError) as exc:
        return first_line(exc)


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
