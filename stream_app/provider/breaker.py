"""The provider circuit breaker of one worker: when Claude fails broadly, or refuses the
service's own configuration, every call of the worker waits and single probes find out
when it works again (issue 8).

- **Opens** on `threshold` consecutive provider failures (5xx, 529, timeouts, connection
  errors, with no answer in between) from at least two different records, so one record
  that always fails cannot open it; or at once on a configuration fault (401, 402, 403,
  404, a 400 about a request parameter), which every record would get alike.
- **While open** every call waits in `admit()` (no budget is spent), first come first
  served. One call at a time goes out as the probe, after a capped exponential backoff
  with jitter: `min(probe_max, probe_base * 2**n) * U(0.5, 1)` seconds for the n-th probe
  (n from 0), or the provider's `retry-after` when longer. A probe that fails sends its
  record to the back of the queue, so the next probe is another record. During an outage a
  record not refused since the stop began (another job's, say) probes first and at once;
  when the last waiting call gives up (its job was cancelled), the next one probes at once.
- **Closes** as soon as any call is answered (a result, or an answer that is the record's
  own fault): the provider works again.
- **A canary tells a record's own fault from an outage.** Records that always fail (an
  HTTP 500 for that text only) look like an outage when no other record is there to show
  that the provider works: their failures open the breaker and their probes keep failing.
  So when a record has failed more probes than its retries allow, its next failed probe is
  followed at once, in the same probe turn, by a canary: a minimal request that does not
  depend on any record (`stream_app.provider.client.CANARY_TEXT`). The canary answered
  (`canary_answered`): the provider works, the breaker closes, and the record's next call
  decides (failing again, the fault is the record's own: it fails). The canary refused too
  (`canary_failed`): an outage, no record fails, probing goes on.

A provider failure uses up a record's retries only while the trouble is the record's alone:
the breaker is closed and every failure since the last answer came from that record. A 400
read as a configuration fault is taken back for its record when another record succeeds
meanwhile; the next identical answer then fails that record instead of stopping the line.

Times are Unix seconds from an injectable clock; waiting uses an injectable sleep, so the
logic is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stream_app.core.logs import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class StopKind(Enum):
    PROVIDER_UNAVAILABLE = "unavailable"
    CONFIGURATION = "configuration_error"


@dataclass
class Admission:
    """One call let through `admit()`; it must be answered (or released) exactly once."""

    key: str
    probe: bool
    open: bool = True


@dataclass
class Stop:
    """Why and since when the line is stopped."""

    kind: StopKind
    since: float
    message: str
    trigger: str  # the record whose answer stopped it
    could_be_the_records: bool
    next_probe_at: float
    failed_probes: int = 0
    refused_calls: int = 1
    # Records whose calls were refused since (or just before) the stop began.
    refused_records: set[str] = field(default_factory=set)


@dataclass
class ProviderBreaker:
    threshold: int = 3
    probe_base_seconds: float = 1.0
    probe_max_seconds: float = 15.0
    clock: Clock = time.time
    sleep: Sleep = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    _stop: Stop | None = field(default=None, init=False)
    _streak: list[str] = field(default_factory=list, init=False)
    _probing: bool = field(default=False, init=False)
    _waiters: deque[object] = field(default_factory=deque, init=False)
    _waiting_keys: dict[object, str] = field(default_factory=dict, init=False)
    _in_flight: Counter[str] = field(default_factory=Counter, init=False)
    _refuted: set[str] = field(default_factory=set, init=False)
    _answers: int = field(default=0, init=False)
    # Canaries sent and answered since start (each answered one is billed: a few tokens).
    canaries_sent: int = field(default=0, init=False)
    canaries_answered: int = field(default=0, init=False)
    # Canaries refused: each explains the failed probes before it (an outage).
    canaries_refused: int = field(default=0, init=False)
    # Calls the provider did not serve (5xx, 529, timeouts, configuration faults) since start.
    _refused_total: int = field(default=0, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise ValueError("threshold must be >= 2 (failures of two records at least)")

    # -- state ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._stop is not None

    @property
    def stop(self) -> Stop | None:
        return self._stop

    def report(self) -> dict[str, Any]:
        """The provider's state as the ready body and job status show it."""
        stop = self._stop
        if stop is None:
            return {"state": "available", "refused_calls_total": self._refused_total}
        return {
            "state": stop.kind.value,
            "since": _iso(stop.since),
            "message": stop.message,
            # Calls refused since this stop began, probes included; and since the worker started.
            "refused_calls": stop.refused_calls,
            "refused_calls_total": self._refused_total,
            "failed_probes": stop.failed_probes,
            "next_probe_at": _iso(stop.next_probe_at),
        }

    def is_isolated(self, key: str) -> bool:
        """Whether the current trouble is this record's alone."""
        return self._stop is None and set(self._streak) <= {key}

    def others_in_flight(self, key: str) -> int:
        return sum(n for k, n in self._in_flight.items() if k != key)

    # -- calls ----------------------------------------------------------------------------

    async def admit(self, key: str) -> Admission:
        """Wait until a call for record `key` may go out: at once while closed; while open,
        only as the probe when it is this caller's turn and the probe is due."""
        if self._stop is None and not self._waiters:
            return self._enter(key, probe=False)
        ticket = object()
        self._waiters.append(ticket)
        self._waiting_keys[ticket] = key
        try:
            while self._stop is not None:
                first = self._next_prober() is ticket
                now = self.clock()
                due_at = self._probe_due(self._stop, key)
                if first and not self._probing and now >= due_at:
                    self._probing = True
                    log.debug("probing the provider", record=key, state=self._stop.kind.value)
                    return self._enter(key, probe=True)
                due = due_at - now if first and not self._probing else None
                await self._wait_for_change(due)
            return self._enter(key, probe=False)
        except asyncio.CancelledError:
            self._left_the_line()
            raise
        finally:
            self._waiters.remove(ticket)
            del self._waiting_keys[ticket]
            self._pulse()

    def _next_prober(self) -> object:
        """The waiter whose turn it is to probe: during an outage, the first one whose
        record has not been refused in this stop (it may show the provider works, at no
        record's expense); else the first in line."""
        stop = self._stop
        if stop is not None and stop.kind is StopKind.PROVIDER_UNAVAILABLE:
            for ticket in self._waiters:
                if self._waiting_keys[ticket] not in stop.refused_records:
                    return ticket
        return self._waiters[0]

    @staticmethod
    def _probe_due(stop: Stop, key: str) -> float:
        """A record not refused in this outage probes as soon as no probe is out; the
        others wait for the backoff."""
        fresh = stop.kind is StopKind.PROVIDER_UNAVAILABLE and key not in stop.refused_records
        return min(stop.next_probe_at, stop.since) if fresh else stop.next_probe_at

    def _left_the_line(self) -> None:
        """A waiting call gave up (its job was cancelled or deleted). When it was the last
        one, the next call to come probes at once: the stop's own records may all be gone,
        and a record of another job should not wait out their backoff (still one probe at a
        time)."""
        stop = self._stop
        if stop is not None and len(self._waiters) == 1 and not self._probing:
            stop.next_probe_at = min(stop.next_probe_at, self.clock())

    def still_admits(self, admission: Admission) -> bool:
        """Whether a call admitted earlier may still go out: not when the breaker opened
        since (while it waited for its budget slot), unless it is the probe."""
        return self._stop is None or admission.probe

    def answered(self, admission: Admission) -> None:
        """The provider answered this call (a result, or a fault of the record's own)."""
        if not self._leave(admission):
            return
        self._streak.clear()
        self._refuted.discard(admission.key)
        stop = self._stop
        if stop is not None:
            if stop.could_be_the_records and admission.key != stop.trigger:
                self._refuted.add(stop.trigger)
            self._stop = None
            log.warning(
                "provider answers again: calls resume",
                state=stop.kind.value,
                stopped_seconds=round(self.clock() - stop.since, 3),
                refused_calls=stop.refused_calls,
            )
        self._pulse()

    def provider_failed(
        self, admission: Admission, message: str, retry_after: float | None = None
    ) -> bool:
        """A 5xx/529/timeout/connection error for this call. Returns whether it counts
        against the record's retries (only when the trouble is the record's alone)."""
        if not self._leave(admission):
            return False
        self._refused_total += 1
        now = self.clock()
        stop = self._stop
        if stop is not None:
            stop.refused_calls += 1
            stop.refused_records.add(admission.key)
            if admission.probe:
                self._reschedule(stop, now, retry_after)
            self._pulse()
            return False
        self._streak.append(admission.key)
        records = set(self._streak)
        if len(self._streak) >= self.threshold and len(records) >= 2:
            refused = len(self._streak)
            self._open(StopKind.PROVIDER_UNAVAILABLE, message, admission.key, False, now, refused)
            if self._stop is not None:
                self._stop.refused_records.update(records)
            if retry_after:
                self._stop_at_least(now + retry_after)
            return False
        self._pulse()
        return records == {admission.key}

    def rate_limited(self, admission: Admission, retry_after: float | None) -> None:
        """A 429: the budget handles it; a probe answered so is simply tried again later."""
        if not self._leave(admission):
            return
        stop = self._stop
        if stop is not None and admission.probe:
            self._reschedule(stop, self.clock(), retry_after)
        self._pulse()

    def configuration_fault(
        self, admission: Admission, message: str, could_be_the_records: bool
    ) -> bool:
        """The request was refused as configured. Returns True when it is the record's own
        fault after all (the same 400 again after other records succeeded): fail it."""
        if not self._leave(admission):
            return False
        if could_be_the_records and admission.key in self._refuted:
            self._refuted.discard(admission.key)
            self._pulse()
            return True
        self._refused_total += 1
        now = self.clock()
        stop = self._stop
        if stop is None:
            self._open(StopKind.CONFIGURATION, message, admission.key, could_be_the_records, now)
            return False
        stop.refused_calls += 1
        if admission.probe:
            self._reschedule(stop, now, None)
        if stop.kind is StopKind.PROVIDER_UNAVAILABLE or stop.message != message:
            stop.kind, stop.message = StopKind.CONFIGURATION, message
            stop.trigger, stop.could_be_the_records = admission.key, could_be_the_records
            log.warning("provider refuses the configuration: calls stay stopped", message=message)
        self._pulse()
        return False

    def canary_wanted(self, admission: Admission, failed_probes: int, retries: int) -> bool:
        """Whether a probe that just failed should be followed by a canary: the line is
        stopped as an outage (not a configuration fault), this call was the probe, and its
        record has failed more probes (`failed_probes`, this one included) than its
        `retries` (BATCH_RECORD_RETRY_COUNT) allow. Pure: changes nothing."""
        stop = self._stop
        return (
            stop is not None
            and stop.kind is StopKind.PROVIDER_UNAVAILABLE
            and admission.probe
            and admission.open
            and failed_probes > retries
        )

    def canary_answered(self, admission: Admission) -> None:
        """The probe of `admission` failed, then the canary sent in its turn was answered:
        the provider works, so the probe's failure is its record's own. Counts the refused
        probe and closes the breaker (every waiting call goes on)."""
        if not self._leave(admission):
            return
        self.canaries_sent += 1
        self.canaries_answered += 1
        self._refused_total += 1
        stop = self._stop
        self._streak.clear()
        if stop is not None:
            stop.refused_calls += 1
            self._stop = None
            log.warning(
                "a canary was answered while a record kept failing: the provider works, "
                "calls resume; that record's failures are its own",
                record=admission.key,
                stopped_seconds=round(self.clock() - stop.since, 3),
                refused_calls=stop.refused_calls,
            )
        self._pulse()

    def canary_failed(
        self, admission: Admission, message: str, retry_after: float | None = None
    ) -> None:
        """The probe of `admission` failed and the canary sent in its turn was refused too
        (5xx, 529, timeout, connection error): an outage. Both calls count as refused and
        as failed probes; the next probe waits its backoff. No record's retries are used."""
        if not self._leave(admission):
            return
        self.canaries_sent += 1
        self.canaries_refused += 1
        self._refused_total += 2
        stop = self._stop
        if stop is not None:
            stop.refused_calls += 2
            stop.refused_records.add(admission.key)
            stop.failed_probes += 1  # the canary; `_reschedule` counts the record's probe
            self._reschedule(stop, self.clock(), retry_after)
            log.info("the canary was refused too: still an outage", message=message)
        self._pulse()

    def own_failure(self, admission: Admission) -> None:
        """A provider failure (5xx...) of a call made right after a canary was answered for
        its record: the record's own fault. Counted as refused; it neither opens the breaker
        nor counts towards it (the streak of other records' failures is left as it is)."""
        if not self._leave(admission):
            return
        self._refused_total += 1
        self._pulse()

    def release(self, admission: Admission) -> None:
        """The call ended without an answer (an internal error, cancellation)."""
        if not self._leave(admission):
            return
        stop = self._stop
        if stop is not None and admission.probe:
            stop.next_probe_at = self.clock() + self._backoff(stop.failed_probes)
        self._pulse()

    async def next_answer(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until another call is answered."""
        seen = self._answers
        deadline = self.clock() + timeout
        while self._answers == seen:
            left = deadline - self.clock()
            if left <= 0:
                return
            await self._wait_for_change(left)

    # -- internals ------------------------------------------------------------------------

    def _enter(self, key: str, *, probe: bool) -> Admission:
        self._in_flight[key] += 1
        return Admission(key, probe)

    def _leave(self, admission: Admission) -> bool:
        if not admission.open:
            return False
        admission.open = False
        self._in_flight[admission.key] -= 1
        if self._in_flight[admission.key] <= 0:
            del self._in_flight[admission.key]
        if admission.probe:
            self._probing = False
        self._answers += 1
        return True

    def _open(
        self,
        kind: StopKind,
        message: str,
        trigger: str,
        could_be_the_records: bool,
        now: float,
        refused: int = 1,
    ) -> None:
        self._streak.clear()
        self._stop = Stop(
            kind, now, message, trigger, could_be_the_records, now + self._backoff(0), 0, refused
        )
        if kind is StopKind.CONFIGURATION:
            log.warning(
                "provider refuses the configuration: this worker takes no records until a "
                "probe succeeds; no record is failed for it",
                message=message,
            )
        else:
            log.warning(
                "provider unavailable: every call waits, single probes until it answers",
                message=message,
            )
        self._pulse()

    def _reschedule(self, stop: Stop, now: float, retry_after: float | None) -> None:
        stop.failed_probes += 1
        stop.next_probe_at = now + max(self._backoff(stop.failed_probes), retry_after or 0.0)

    def _stop_at_least(self, until: float) -> None:
        if self._stop is not None:
            self._stop.next_probe_at = max(self._stop.next_probe_at, until)

    def _backoff(self, probes: int) -> float:
        base = min(self.probe_max_seconds, self.probe_base_seconds * 2.0 ** min(probes, 32))
        return base * (0.5 + self.rng.random() / 2)

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, timeout: float | None) -> None:
        changed = asyncio.ensure_future(self._changed.wait())
        waits: set[asyncio.Future[Any]] = {changed}
        if timeout is not None:
            waits.add(asyncio.ensure_future(self.sleep(max(0.0, timeout))))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat()
