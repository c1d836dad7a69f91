"""Which lane runs a job: the live lane (one call per record, under the cluster's request
budget, full price) or the batch lane (the provider's Message Batches API: half the price,
outside the per-minute limits, most batches end within an hour). Pure logic, no Kafka.

A job asks for `live`, `batch` or `auto` (default BATCH_DEFAULT_LANE). `auto` takes:
- without a deadline: the batch lane when the job's projected live duration (its records
  plus the live backlog ahead of it, at CLAUDE_REQUESTS_PER_MINUTE) exceeds
  BATCH_LANE_AUTO_MINUTES, the live lane otherwise;
- with a deadline: the cheapest lane expected to finish by it: the batch lane when the
  provider's typical batch time (1 h) fits before the deadline, else the live lane (and
  when the live lane would miss it too, still the live lane: it is the faster one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Lane = Literal["live", "batch"]
LaneRequest = Literal["live", "batch", "auto"]
# The provider's Message Batches docs: most batches end within 1 hour.
BATCH_TYPICAL_SECONDS = 3600.0


@dataclass(frozen=True)
class LaneChoice:
    """The lane a job runs in, and why (the job's status shows both)."""

    lane: Lane
    reason: str


@dataclass(frozen=True)
class LivePace:
    """What the live lane has on its plate: `backlog_records` of live-lane jobs ahead
    (without an outcome yet), served at `requests_per_minute` (the cluster's budget)."""

    requests_per_minute: float
    backlog_records: int = 0

    def seconds_for(self, records: int) -> float:
        """Projected seconds until `records` more records are done on the live lane."""
        return (self.backlog_records + records) * 60.0 / self.requests_per_minute


def choose_lane(
    requested: LaneRequest,
    records: int,
    pace: LivePace,
    *,
    auto_minutes: float,
    deadline: float | None = None,
    now: float = 0.0,
    batch_seconds: float = BATCH_TYPICAL_SECONDS,
) -> LaneChoice:
    """The lane of a job of `records` records asking for `requested` (`deadline`, `now`:
    Unix times; `auto_minutes`: BATCH_LANE_AUTO_MINUTES; `batch_seconds`: how long a
    provider batch is expected to take)."""
    if requested == "live":
        return LaneChoice("live", "asked for the live lane")
    if requested == "batch":
        if deadline is not None and batch_seconds > deadline - now:
            return LaneChoice(
                "batch",
                f"asked for the batch lane; the deadline in {_minutes(deadline - now)} is "
                f"sooner than a provider batch's typical {_minutes(batch_seconds)}: records "
                "not answered in time move to the live lane (at the live price) before it",
            )
        return LaneChoice("batch", "asked for the batch lane")
    live_seconds = pace.seconds_for(records)
    projected = (
        f"projected live duration {_minutes(live_seconds)} ({records} records + "
        f"{pace.backlog_records} ahead at {pace.requests_per_minute:g} requests/minute)"
    )
    if deadline is not None:
        left = deadline - now
        if batch_seconds <= left:
            return LaneChoice(
                "batch",
                f"auto: the batch lane (half the price) is expected to end within "
                f"{_minutes(batch_seconds)}, before the deadline in {_minutes(left)}",
            )
        if live_seconds <= left:
            return LaneChoice(
                "live",
                f"auto: the deadline in {_minutes(left)} is too close for a provider batch "
                f"(~{_minutes(batch_seconds)}); {projected} fits",
            )
        return LaneChoice(
            "live",
            f"auto: neither lane is expected to finish by the deadline in {_minutes(left)} "
            f"({projected}); the live lane is the faster",
        )
    if live_seconds > auto_minutes * 60:
        return LaneChoice(
            "batch", f"auto: {projected} exceeds BATCH_LANE_AUTO_MINUTES ({auto_minutes:g} min)"
        )
    return LaneChoice(
        "live",
        f"auto: {projected} is within BATCH_LANE_AUTO_MINUTES ({auto_minutes:g} min)",
    )


def parse_deadline(text: str) -> float:
    """An ISO 8601 date-time (`2026-12-07T18:00:00Z`, an offset, or none: UTC) as Unix
    time; ValueError when it is not one."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def with_zone(text: str) -> str:
    """A deadline as the status shows it: as given, with `Z` added when it names no time
    zone (it is read as UTC, and says so)."""
    text = text.strip()
    try:
        naive = datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is None
    except ValueError:
        return text
    return f"{text}Z" if naive else text


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


# How much longer than its plain pace the live lane is given for records moved to it to
# make a deadline (its pace is shared, calls may be retried).
MOVE_SAFETY = 1.25


def must_go_live(
    unfinished: int,
    *,
    deadline: float,
    now: float,
    requests_per_minute: float,
    margin_seconds: float,
    live_ahead: LiveQueue | None = None,
) -> bool:
    """Whether a batch-lane job's `unfinished` records (in provider batches or waiting for
    one) must go to the live lane now to make `deadline` (Unix time; `now` too).

    The live lane shares CLAUDE_REQUESTS_PER_MINUTE (`requests_per_minute`) with the live
    records already waiting (`live_ahead`): with fair shares the moved records get an even
    share among the jobs waiting, and never wait for more than every record ahead (FIFO
    waits for all of them), so they need min(`unfinished` x (jobs + 1), `unfinished` +
    records ahead) calls' time, times MOVE_SAFETY, plus `margin_seconds` (a poll of the
    provider batch and its cancel). Until then the records wait for the cheaper provider
    batch: they move at the last moment the live lane can still make it."""
    ahead = live_ahead or LiveQueue(0, 0)
    calls = min(unfinished * (ahead.jobs + 1), unfinished + ahead.records)
    needed = calls * 60.0 / requests_per_minute * MOVE_SAFETY + margin_seconds
    return now + needed >= deadline


@dataclass(frozen=True)
class LiveQueue:
    """The live records waiting on this worker for a call, other jobs' only: `jobs` with
    records waiting (FIFO scheduling counts each record as a job of its own), `records`."""

    jobs: int
    records: int
