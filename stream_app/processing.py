"""Processing one record: budget, attempts, retries, and the one outcome it produces."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic

from schemas import InsightResponse, RecordEvent, ResponseMetadata, ResultEvent
from stream_app.llm import Analysis, InsightClient, InvalidOutputWithUsage, Usage
from stream_app.logs import get_logger
from stream_app.ratelimit import RateBudget

log = get_logger(__name__)

# 408, 409, 429 and every 5xx (529 "overloaded" included) are worth another attempt.
_RETRYABLE_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 1
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Jittered exponential backoff; the provider's `retry-after` wins when longer."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        delay = base * (0.5 + rng.random() / 2)
        return max(delay, retry_after or 0.0)


class IntakeGate:
    """Admits records to the LLM until the worker drains, and counts calls in flight.

    On shutdown the gate closes: calls in flight finish and their results are sent, while
    records not yet started wait at `admit()` until Faust cancels them. Those are never
    acknowledged, so their offsets are not committed and they are processed after restart.
    """

    def __init__(self) -> None:
        self._closed = False
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    async def admit(self) -> None:
        if self._closed:
            await asyncio.Event().wait()  # until cancelled by the stopping worker

    @asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    def close(self) -> None:
        """No record starts from now on (calls in flight go on)."""
        self._closed = True

    async def drain(self, timeout: float) -> int:
        """Close the gate and wait for calls in flight; returns how many were left."""
        self.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        return self._count


@dataclass
class RecordProcessor:
    """Turns a record event into exactly one result event; never raises for provider errors."""

    client: InsightClient
    budget: RateBudget
    policy: RetryPolicy
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    async def process(self, event: RecordEvent) -> ResultEvent:
        started = time.monotonic()
        chars = self.client.request_chars(event.record)
        input_tokens = output_tokens = attempts = failures = 0
        while True:
            grant = await self.budget.acquire(
                self.budget.estimate_input_tokens(chars),
                self.budget.estimate_output_tokens(self.client.max_tokens),
            )
            attempts += 1
            billed = Usage(0, 0)
            headers: Mapping[str, str] = {}
            try:
                analysis = await self.client.analyze(event.record)
                billed, headers = analysis.usage, analysis.headers
            except anthropic.RateLimitError as exc:
                # Not the record's fault: it does not use up a retry.
                headers = exc.response.headers
                self.budget.throttled(retry_after_seconds(headers))
                log.info("provider throttled", job=event.job_id, index=event.index)
                continue
            except InvalidOutputWithUsage as exc:
                billed, headers = exc.usage, exc.headers
                error, retry_after = str(exc), None
            except anthropic.APIStatusError as exc:
                headers = exc.response.headers
                error = describe_status_error(exc)
                retry_after = retry_after_seconds(headers)
                if not is_retryable_status(exc.status_code):
                    return self._failed(event, error, input_tokens, output_tokens, attempts)
            except (anthropic.APITimeoutError, anthropic.APIConnectionError) as exc:
                error, retry_after = f"{type(exc).__name__}: {exc}", None
            else:
                input_tokens += billed.input_tokens
                output_tokens += billed.output_tokens
                return self._succeeded(
                    event, analysis, input_tokens, output_tokens, attempts, started
                )
            finally:
                self.budget.settle(grant, chars, billed.input_tokens, billed.output_tokens)
                self.budget.observe_headers(headers)
            input_tokens += billed.input_tokens
            output_tokens += billed.output_tokens
            failures += 1
            if failures > self.policy.retries:
                return self._failed(event, error, input_tokens, output_tokens, attempts)
            delay = self.policy.backoff(failures, retry_after, self.rng)
            log.info(
                "retrying record",
                job=event.job_id,
                index=event.index,
                attempt=attempts,
                error=error,
                delay=round(delay, 3),
            )
            await self.sleep(delay)

    def _succeeded(
        self,
        event: RecordEvent,
        analysis: Analysis,
        input_tokens: int,
        output_tokens: int,
        attempts: int,
        started: float,
    ) -> ResultEvent:
        response = InsightResponse(
            **analysis.insight.model_dump(),
            metadata=ResponseMetadata(
                tokens_used=input_tokens + output_tokens,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                model=self.client.model,
                attempts=attempts,
                latency_ms=int((time.monotonic() - started) * 1000),
            ),
        )
        return _outcome(event, input_tokens, output_tokens, attempts, response=response)

    @staticmethod
    def _failed(
        event: RecordEvent, error: str, input_tokens: int, output_tokens: int, attempts: int
    ) -> ResultEvent:
        return _outcome(event, input_tokens, output_tokens, attempts, error=error)


def _outcome(
    event: RecordEvent,
    input_tokens: int,
    output_tokens: int,
    attempts: int,
    *,
    response: InsightResponse | None = None,
    error: str | None = None,
) -> ResultEvent:
    return ResultEvent(
        job_id=event.job_id,
        index=event.index,
        success=response is not None,
        response=response,
        error=error,
        record_id=event.record.id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        attempts=attempts,
        finished_at=time.time(),
    )


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUS or status >= 500


def describe_status_error(exc: anthropic.APIStatusError) -> str:
    """`HTTP 400 invalid_request_error: <provider message>`: the provider's words, no secrets."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    detail: dict[str, Any] = error if isinstance(error, dict) else {}
    kind = detail.get("type") or type(exc).__name__
    message = detail.get("message") or exc.message
    return f"HTTP {exc.status_code} {kind}: {message}"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) / scale)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(raw) if name == "retry-after" else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    return None
