"""The provider's Message Batches API for records of the batch lane: the request of each
record (the live lane's request, `stream_app.provider.request`), one provider batch's
create / poll / results / cancel through the SDK's `client.messages.batches`, and what
each item's result means under the live lane's outcome rules (`stream_app.provider.answers`).

A sibling of `stream_app.provider.client` (one live call): no Kafka here. Which records go
into which batch, and recording batch ids durably, is `stream_app.kafka.batch_lane`'s job.

Provider facts this module relies on (Anthropic's Message Batches docs, late 2026): at most
100,000 requests or 256 MB per batch; results unordered, matched by `custom_id` (unique in
the batch, 1-64 chars of [a-zA-Z0-9_-]); result types succeeded / errored / canceled /
expired; a batch expires 24 h after its create; a retrieve or results call seconds after
the create may answer 404 (anthropic-sdk-python #1432); the 1-hour cache TTL is
recommended inside batches since they can take longer than the 5-minute cache lives; and
every token of a batch is billed at 50% of the standard price, cache reads and writes too.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import orjson
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from stream_app.core.logs import get_logger
from stream_app.provider.answers import (
    ConfigurationFault,
    ContentFault,
    ProviderFault,
    RateLimited,
    RecordFault,
    Succeeded,
    Truncated,
    classify_error,
    read_reply,
)
from stream_app.provider.client import Reply
from stream_app.provider.pricing import Price
from stream_app.provider.request import PreparedTask
from stream_app.provider.usage import Usage

log = get_logger(__name__)

# The provider's limits on one batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
# A batch that has not ended this long after its create is expired by the provider.
BATCH_EXPIRY_SECONDS = 24 * 3600.0
# Batch usage costs this fraction of the live price (input, output, cache writes and reads).
BATCH_PRICE_MULTIPLIER = Decimal("0.5")
ONE_HOUR_CACHE: dict[str, str] = {"type": "ephemeral", "ttl": "1h"}

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SAFE_PREFIX = re.compile(r"^[a-zA-Z0-9_]+$")
# Longest index suffix kept room for ("-" and up to 12 digits).
_INDEX_ROOM = 13
# Error types of an `errored` item, and the HTTP status the same error has on a live call
# (Anthropic's "Errors" page), so the live lane's classification reads them alike.
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def at_batch_rates(price: Price) -> Price:
    """`price` for a request of a Message Batch: the model's batch prices as genai-prices
    records them, else half of every rate, cache writes and reads and tiers included
    (`stream_app.provider.pricing.Price.at_batch_rates`)."""
    return price.at_batch_rates()


def custom_id(job_id: str, index: int) -> str:
    """The `custom_id` of record `index` of `job_id`: `<job_id>-<index>` when that is 1-64
    characters of [a-zA-Z0-9_-] and the job id has no "-" (a hex uuid job id does), else
    `h<first 32 hex of sha256(job_id)>-<index>`. Either way `record_index` reads it back."""
    if index < 0:
        raise ValueError(f"a record index is >= 0, got {index}")
    prefix = job_id if _SAFE_PREFIX.match(job_id) and len(job_id) <= 64 - _INDEX_ROOM else None
    if prefix is None:
        prefix = "h" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
    made = f"{prefix}-{index}"
    assert _CUSTOM_ID.match(made), made
    return made


def record_index(made: str) -> int:
    """The record index a `custom_id` made by `custom_id` carries (ValueError otherwise)."""
    _, dash, digits = made.rpartition("-")
    if not dash or not digits.isdigit():
        raise ValueError(f"not a custom_id of this service: {made!r}")
    return int(digits)


def batch_request(task: PreparedTask, text: str, item_id: str) -> dict[str, Any]:
    """One item of `messages.batches.create(requests=...)`: the live lane's request for this
    text, its cache breakpoint on the 1-hour TTL."""
    params = task.request(text)
    params["system"] = [
        {**block, "cache_control": dict(ONE_HOUR_CACHE)} if "cache_control" in block else block
        for block in params["system"]
    ]
    return {"custom_id": item_id, "params": params}


def request_bytes(request: dict[str, Any]) -> int:
    """Bytes one item adds to the create request's body (for the 256 MB limit)."""
    return len(orjson.dumps(request)) + 1


# --- What an item's result means ----------------------------------------------------------


@dataclass(frozen=True)
class ItemSucceeded:
    """The record's answer: its fields, and the tokens billed (at batch rates)."""

    fields: dict[str, Any]
    usage: Usage


@dataclass(frozen=True)
class ItemFailed:
    """The record fails with this message; `usage` is what its answer billed, if any."""

    message: str
    usage: Usage = Usage()


@dataclass(frozen=True)
class ItemResend:
    """The record goes again (a later batch or the live lane). `uses_retry`: the answer was
    the record's fault (output that does not validate, cut off), which uses up one of its
    `BATCH_RECORD_RETRY_COUNT` retries; provider trouble and expiry do not."""

    reason: str
    usage: Usage = Usage()
    uses_retry: bool = False


@dataclass(frozen=True)
class ItemSkipped:
    """The item was canceled (its job's cancel): the record is skipped, nothing billed."""

    reason: str = "cancelled"


ItemOutcome = ItemSucceeded | ItemFailed | ItemResend | ItemSkipped


def read_item(result: Any, task: PreparedTask, *, now: float | None = None) -> ItemOutcome:
    """What one `MessageBatchIndividualResponse.result` means, by the live lane's rules:
    - succeeded: the answer is read as a live reply (`answers.read_reply`): valid output is
      the result; a refusal or a context-window overflow fails the record; output that does
      not validate or was cut off is sent again (using up a retry);
    - errored: the error is classified as the live call's would be (`answers.classify_error`):
      a fault of the record's content fails it, a request refused by validation fails it
      with the provider's message named, provider trouble and rate limits are sent again;
    - expired: sent again; canceled: skipped."""
    kind = getattr(result, "type", None)
    if kind == "succeeded":
        message = result.message
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = Usage.from_api(message.usage)
        reply = Reply(text, message.stop_reason, usage, {}, task.max_tokens)
        answer = read_reply(reply, task.parse)
        if isinstance(answer, Succeeded):
            return ItemSucceeded(answer.fields, usage)
        if isinstance(answer, ContentFault):
            return ItemFailed(answer.message, usage)
        if isinstance(answer, RecordFault | Truncated):
            return ItemResend(answer.message, usage, uses_retry=True)
        return ItemFailed(f"unreadable answer: {answer}", usage)
    if kind == "errored":
        answer = classify_error(
            _as_status_error(result.error), now=now or time.time(), cap_seconds=0.0
        )
        if isinstance(answer, ProviderFault | RateLimited):
            return ItemResend(answer.message)
        if isinstance(answer, ConfigurationFault):
            return ItemFailed(f"refused by validation: {answer.message}")
        if isinstance(answer, ContentFault):
            return ItemFailed(answer.message)
        return ItemFailed(str(answer))
    if kind == "expired":
        return ItemResend("the provider's batch expired before this request was processed")
    if kind == "canceled":
        return ItemSkipped()
    return ItemResend(f"unknown batch result type {kind!r}")


def _as_status_error(error: Any) -> anthropic.APIStatusError:
    """An errored item's error response as the SDK raises it on a live call."""
    body = error.model_dump() if hasattr(error, "model_dump") else dict(error or {})
    detail = body.get("error") or {}
    status = ERROR_STATUS.get(str(detail.get("type")), 500)
    response = httpx2.Response(
        status, request=httpx2.Request("POST", "https://api.anthropic.com/v1/messages/batches")
    )
    return anthropic.APIStatusError(str(detail.get("message", "")), response=response, body=body)


# --- One provider batch through the SDK ---------------------------------------------------


@dataclass(frozen=True)
class PollPolicy:
    """Seconds between polls of a batch: `first`, doubling up to `longest`. A 404 within
    `not_found_grace` seconds of the create is the provider not showing the batch yet."""

    first: float = 1.0
    longest: float = 60.0
    not_found_grace: float = 60.0

    def delay(self, polls: int) -> float:
        return float(min(self.longest, self.first * 2 ** max(0, polls)))


class BatchClient:
    """One provider batch's calls. Errors other than the early 404 are the SDK's
    (`anthropic.APIStatusError`, `anthropic.APIConnectionError`): the caller retries."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        policy: PollPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.policy = policy or PollPolicy()
        self._sleep = sleep
        self._clock = clock

    async def create(self, requests: list[dict[str, Any]]) -> MessageBatch:
        """Create a batch of `requests` (`batch_request` items); raises ValueError when they
        pass the provider's limits (100,000 requests, 256 MB)."""
        if not 1 <= len(requests) <= MAX_BATCH_REQUESTS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_REQUESTS} requests")
        if sum(map(request_bytes, requests)) > MAX_BATCH_BYTES:
            raise ValueError("a batch is at most 256 MB")
        return await self._client.messages.batches.create(requests=requests)  # type: ignore[arg-type]

    async def retrieve(self, batch_id: str, created_at: float) -> MessageBatch:
        """The batch; a 404 within `not_found_grace` seconds of `created_at` (Unix time) is
        retried after a short wait (anthropic-sdk-python #1432), a later one raised."""
        return await self._early_404(
            lambda: self._client.messages.batches.retrieve(batch_id), created_at
        )

    async def wait_ended(
        self,
        batch_id: str,
        created_at: float,
        on_poll: Callable[[MessageBatch], Awaitable[None]] | None = None,
    ) -> MessageBatch:
        """Poll with backoff until the batch has ended (`processing_status` "ended");
        `on_poll` sees every answer (the status shows its `request_counts`)."""
        polls = 0
        while True:
            batch = await self.retrieve(batch_id, created_at)
            if on_poll is not None:
                await on_poll(batch)
            if batch.processing_status == "ended":
                return batch
            await self._sleep(self.policy.delay(polls))
            polls += 1

    async def results(
        self, batch_id: str, created_at: float
    ) -> AsyncIterator[MessageBatchIndividualResponse]:
        """Every item's result of an ended batch, streamed by the SDK's JSONL iterator."""
        decoder = await self._early_404(
            lambda: self._client.messages.batches.results(batch_id), created_at
        )
        async for item in decoder:
            yield item

    async def cancel(self, batch_id: str) -> MessageBatch:
        """Ask the provider to cancel: the batch moves to `canceling`; requests already
        processed still count (and are paid for)."""
        return await self._client.messages.batches.cancel(batch_id)

    async def created_since(self, since: float, requests: int) -> list[MessageBatch]:
        """Batches created at or after `since` (Unix time) holding exactly `requests`
        requests, oldest first: what a worker that crashed between a create and recording
        its id looks for (the list is newest first, so it stops at the first older one)."""
        found: list[MessageBatch] = []
        async for batch in self._client.messages.batches.list(limit=100):
            if _timestamp(batch.created_at) < since:
                break
            counts = batch.request_counts
            total = (
                counts.processing
                + counts.succeeded
                + counts.errored
                + counts.canceled
                + counts.expired
            )
            if total == requests:
                found.append(batch)
        return sorted(found, key=lambda b: b.created_at)

    async def _early_404(self, call: Callable[[], Awaitable[Any]], created_at: float) -> Any:
        waited = 0
        while True:
            try:
                return await call()
            except anthropic.NotFoundError:
                if self._clock() - created_at > self.policy.not_found_grace:
                    raise
                waited += 1
                log.info("message batch not visible yet after its create: retrying", tries=waited)
                await self._sleep(min(self.policy.first, 1.0) * min(waited, 5))


def _timestamp(when: datetime) -> float:
    return when.timestamp()
