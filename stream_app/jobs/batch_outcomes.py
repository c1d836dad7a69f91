"""A batch-lane record's way through provider batches: what it carries from one batch to the
next, and what each item's result makes of it (a result event, or another try in a later
batch or on the live lane). Pure logic, no Kafka (stream_app.kafka.batch_lane moves the
records; stream_app.provider.batches reads the provider's answers).

The rules are the live lane's (stream_app.jobs.processing):
- an answer that was the record's fault (output that does not validate, cut off) uses up
  one of BATCH_RECORD_RETRY_COUNT retries, then the record fails; what those answers billed
  is carried into the record's tokens;
- provider trouble, rate limits and expiry use up none: the record goes into a later
  batch, and after `LATER_BATCHES` such tries it goes to the live lane instead (a
  provider that keeps expiring the batch lane's requests does not hold a job forever);
- canceled (its job's cancel) is skipped; canceled because this worker gave up a batch
  past its expiry goes again like an expired item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas import InsightResponse, RecordEvent, ResultEvent, TaskResponse
from stream_app.jobs.cancellation import skipped_outcome
from stream_app.provider.batches import (
    ItemFailed,
    ItemOutcome,
    ItemResend,
    ItemSkipped,
    ItemSucceeded,
)
from stream_app.provider.request import PreparedTask
from stream_app.provider.usage import Usage

# Unbilled tries (expired, provider trouble) in later batches before the live lane.
LATER_BATCHES = 1


class LaneItem(BaseModel):
    """A record of a batch-lane job on its way (the lane topic's value): the record, and
    what its earlier tries carried: tokens billed, items answered, retries used, later
    batches tried."""

    record: RecordEvent
    usage: dict[str, int] = Field(default_factory=dict)
    attempts: int = Field(0, ge=0)
    retries_used: int = Field(0, ge=0)
    later_batches: int = Field(0, ge=0)
    # How many times the lane sent it again to a later batch (each try is told apart from
    # the one before by this, whatever it was answered).
    tries: int = Field(0, ge=0)
    # Where the record sits on batch.records (its outcome says so: a retry reads it back).
    record_partition: int | None = Field(None, ge=0)
    record_offset: int | None = Field(None, ge=0)

    @property
    def billed(self) -> Usage:
        return Usage(**self.usage) if self.usage else Usage()


@dataclass(frozen=True)
class Produce:
    """The record's one outcome."""

    result: ResultEvent


@dataclass(frozen=True)
class TryAgain:
    """The record goes again: in a later batch (`lane` "batch", as `item`) or live."""

    item: LaneItem
    lane: Literal["batch", "live"]
    reason: str


Step = Produce | TryAgain


def next_step(
    item: LaneItem,
    outcome: ItemOutcome,
    task: PreparedTask,
    *,
    retries: int,
    given_up: bool = False,
    started: float | None = None,
    now: float | None = None,
) -> Step:
    """What `outcome` (one item's result) makes of `item`. `retries`:
    BATCH_RECORD_RETRY_COUNT; `given_up`: this worker cancelled the item's batch past its
    expiry (a canceled item then goes again); `started`: when the record entered the lane
    (Unix time, for the result's latency)."""
    now = time.time() if now is None else now
    attempts = item.attempts + (0 if isinstance(outcome, ItemSkipped) else 1)
    if isinstance(outcome, ItemSkipped):
        if given_up:
            outcome = ItemResend("the provider's batch did not end by its expiry: given up")
        else:
            return Produce(skipped_outcome(item.record, now))
    billed = item.billed + getattr(outcome, "usage", Usage())
    if isinstance(outcome, ItemSucceeded):
        return Produce(
            _result(item, task, billed, attempts, now, fields=outcome.fields, started=started)
        )
    if isinstance(outcome, ItemFailed):
        return Produce(_result(item, task, billed, attempts, now, error=outcome.message))
    assert isinstance(outcome, ItemResend)
    carried = item.model_copy(update={"usage": billed.fields(), "attempts": attempts})
    if outcome.uses_retry:
        if item.retries_used >= retries:
            return Produce(_result(item, task, billed, attempts, now, error=outcome.reason))
        again = carried.model_copy(update={"retries_used": item.retries_used + 1})
        return TryAgain(again, "batch", outcome.reason)
    if item.later_batches < LATER_BATCHES:
        again = carried.model_copy(update={"later_batches": item.later_batches + 1})
        return TryAgain(again, "batch", outcome.reason)
    return TryAgain(carried, "live", outcome.reason)


def _result(
    item: LaneItem,
    task: PreparedTask,
    usage: Usage,
    attempts: int,
    now: float,
    *,
    fields: dict[str, Any] | None = None,
    error: str | None = None,
    started: float | None = None,
) -> ResultEvent:
    record = item.record
    response: InsightResponse | TaskResponse | None = None
    if fields is not None:
        latency_ms = int((now - started) * 1000) if started is not None else 0
        response = task.response(fields, usage, attempts=attempts, latency_ms=latency_ms)
    return ResultEvent(
        job_id=record.job_id,
        index=record.index,
        success=response is not None,
        response=response,
        error=error,
        record_id=record.record.id,
        attempts=attempts,
        finished_at=now,
        model=task.model,
        lane="batch",
        **usage.fields(),
    )
