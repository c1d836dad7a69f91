"""The provider budget, shared by every worker of the cluster without extra infrastructure.

Requests: a global timetable. Time is cut into slots of G = 60 * (1 + S / 5) / rpm seconds
(S = `_ARRIVAL_SPREAD`), counted from the Unix epoch, and slot k belongs to partition k mod P
of `batch.records`. A worker may send only at the start of a slot whose partition it owns, so
each slot is used at most once cluster-wide, whichever worker owns what, through every
rebalance (Kafka gives each partition to one worker at a time). The provider counts
arrivals, not grants, and checks the per-minute limit over shorter windows too (its share,
rpm / 12, over any 5 s). Requests reach it a varying moment after their grant (a late
wake-up, the SDK, the network); while those delays differ by at most S, any 5 s window of
arrivals holds at most ceil((5 + S) / G) = rpm / 12 requests and any 60 s window at most rpm,
at a cost of S / 5 of the budget (3 % at S = 150 ms). A worker owning half the partitions
gets half the slots. Workers need only clocks in step to well under `_SLOT_TOLERANCE` (NTP
gives milliseconds).

Tokens (optional input/output tokens per minute): each worker keeps a 60 s window of the
tokens it spent against its share (owned partitions / P) of the limit, reserving an
estimate before a call and correcting it with the real usage afterwards.

The provider's word wins: a lower `anthropic-ratelimit-requests-limit` than configured
becomes the limit. A 429 whose `anthropic-ratelimit-requests-limit` equals the limit in force
only shows a request arrived a moment early (at a window's edge): every call of the worker
waits `_EARLY_PAUSE` (or the provider's `retry-after` if shorter) and the pace stays. Any
other 429 (a lower limit, no limit header, or the third one within the time of
`_REPEATED_WITHIN_SLOTS` slots) pauses every call for `retry-after`, then halves the pace,
which recovers linearly toward the configured rate over `_RECOVERY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Token spending is counted over 60 s plus this margin (late sends, clock steps).
_MINUTE_MARGIN = 0.25
# How much the delays between grant and arrival may differ (a slot taken up to
# _SLOT_TOLERANCE late, plus the send's own variation, plus a busy machine's stalls of the
# event loop or the network); slots are widened for it. 50 ms cost 1 % of the budget but
# let a 100 ms stall meet 429s: 3-6 a minute at 3,000-6,000 requests/minute (bench.tiers),
# 0 with 150 ms at 96-97 % of the budget.
_ARRIVAL_SPREAD = 0.15
_SLOT_TOLERANCE = 0.03
# The shorter window over which the provider checks its share of the per-minute limit.
_SHORT_WINDOW = 5.0
# An early arrival's 429 costs every call this long a wait (a few slots at high tiers).
_EARLY_PAUSE = 0.25
# This many 429s within the time of this many slots are a real limit, whatever the
# headers say (3 in 2 s at 3,000 requests/minute, 3 in 2 minutes at 50).
_REPEATED_COUNT = 3
_REPEATED_WITHIN_SLOTS = 100
# After a 429 the pace drops and climbs back to the configured rate over this long.
_RECOVERY_SECONDS = 30.0
_MIN_PACE_FACTOR = 0.25
# A worker whose token share grows takes it up over a minute: other workers' recent
# spending, counted against their old, larger shares, is still in the provider's window.
_SHARE_RAMP_SECONDS = 60.0


@dataclass
class Grant:
    """One slot taken: its time and the tokens reserved for it until settled."""

    at: float
    input_tokens: int = 0
    output_tokens: int = 0


class RateBudget:
    """Every attempt to call Claude takes a grant here first."""

    def __init__(
        self,
        requests_per_minute: int,
        *,
        partitions: int = 1,
        input_tokens_per_minute: int | None = None,
        output_tokens_per_minute: int | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be >= 1")
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self._configured_rpm = requests_per_minute
        self._provider_rpm: int | None = None
        self._partitions = partitions
        self._owned: frozenset[int] = frozenset(range(partitions))
        self._input_limit = input_tokens_per_minute
        self._output_limit = output_tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._assigned = asyncio.Event()
        self._assigned.set()
        # Start time of the last slot used (slot sizes change with the provider's limit).
        self._last_slot_start = -math.inf
        self._last_grant: float | None = None
        self._paused_until = 0.0
        self._last_throttle: float | None = None
        self._throttle_factor = 1.0
        self._recent_throttles: deque[float] = deque()
        self._spent: deque[Grant] = deque()
        self._share = 1.0
        self._share_from = 1.0
        self._share_changed = -math.inf
        self._input_per_char = 0.25  # calibrated from real usage
        self._tokens_held_until = 0.0
        self._output_mean: float | None = None
        self.throttled_count = 0
        self.early_count = 0

    # -- configuration that changes at run time -------------------------------------------

    @property
    def requests_per_minute(self) -> int:
        """The cluster-wide limit in force: configured, or the provider's if lower."""
        if self._provider_rpm is not None:
            return min(self._configured_rpm, self._provider_rpm)
        return self._configured_rpm

    @property
    def slot_seconds(self) -> float:
        """Seconds between two slots of the cluster's timetable (see the module docstring)."""
        return 60.0 * (1.0 + _ARRIVAL_SPREAD / _SHORT_WINDOW) / self.requests_per_minute

    @property
    def owned(self) -> frozenset[int]:
        return self._owned

    @property
    def share(self) -> float:
        return len(self._owned) / self._partitions

    def assign(self, partitions: Iterable[int]) -> None:
        """The worker now owns these `batch.records` partitions (after a rebalance)."""
        owned = frozenset(p for p in partitions if 0 <= p < self._partitions)
        now = self._clock()
        old, new = self._token_share(now), len(owned) / self._partitions
        # The first assignment has no history to protect; later growth ramps up.
        self._share_from = new if self._share_changed == -math.inf else old
        self._share_changed = now
        self._share = new
        self._owned = owned
        if owned:
            self._assigned.set()
        else:
            self._assigned.clear()

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Adopt the provider's own request limit when it is lower than configured."""
        raw = headers.get("anthropic-ratelimit-requests-limit")
        if raw is not None and raw.isdigit() and int(raw) > 0:
            self._provider_rpm = int(raw)

    # -- requests -------------------------------------------------------------------------

    def pace_factor(self, now: float | None = None) -> float:
        """1.0 at full speed; lower for a while after the provider throttled us."""
        if self._last_throttle is None:
            return 1.0
        now = self._clock() if now is None else now
        recovered = max(0.0, now - self._last_throttle) / _RECOVERY_SECONDS
        return min(1.0, self._throttle_factor + (1.0 - self._throttle_factor) * recovered)

    def _next_slot(self, now: float) -> int | None:
        """The first owned slot that starts no earlier than allowed, or None if none owned."""
        if not self._owned:
            return None
        slot = self.slot_seconds
        earliest = max(now - _SLOT_TOLERANCE, self._paused_until)
        factor = self.pace_factor(now)
        if factor < 1.0 and self._last_grant is not None:
            # Throttled: on average only `factor` of this worker's slots are used.
            mine = slot * self._partitions / len(self._owned)
            earliest = max(earliest, self._last_grant + mine / factor - slot / 2)
        k = math.ceil(earliest / slot)
        if self._last_slot_start > -math.inf:
            k = max(k, math.floor(self._last_slot_start / slot + 0.5) + 1)
        while k % self._partitions not in self._owned:
            k += 1
        return k

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> Grant:
        """Wait for a slot (and token room); callers are served first come, first served."""
        async with self._lock:
            while True:
                now = self._clock()
                k = self._next_slot(now)
                if k is None:
                    await self._assigned.wait()
                    continue
                start = k * self.slot_seconds
                if start > now:
                    await self._sleep(start - now)
                    continue
                wait = self._token_wait(now, input_tokens, output_tokens)
                if wait > 0:
                    await self._sleep(wait)
                    continue
                return self._take(start, now, input_tokens, output_tokens)

    def grant_at_once(self, input_tokens: int = 0, output_tokens: int = 0) -> Grant | None:
        """The grant `acquire` would give without waiting, when it would give one at once
        (a slot has started, the tokens fit, no caller is waiting); else None, and nothing
        is taken. For callers that would otherwise pay for setting up a wait they do not
        need (`stream_app.jobs.cancellation.CancellableBudget`)."""
        lock = self._lock
        if lock.locked() or getattr(lock, "_waiters", None):
            return None  # first come, first served: someone is waiting
        now = self._clock()
        k = self._next_slot(now)
        if k is None:
            return None
        start = k * self.slot_seconds
        if start > now or self._token_wait(now, input_tokens, output_tokens) > 0:
            return None
        return self._take(start, now, input_tokens, output_tokens)

    def _take(self, start: float, now: float, input_tokens: int, output_tokens: int) -> Grant:
        self._last_slot_start = start
        self._last_grant = now
        grant = Grant(now, input_tokens, output_tokens)
        if self._input_limit is not None or self._output_limit is not None:
            self._spent.append(grant)
        return grant

    def throttled(self, retry_after: float | None, requests_limit: int | None = None) -> bool:
        """The provider answered 429. `retry_after`: the wait it asked for (s);
        `requests_limit`: its `anthropic-ratelimit-requests-limit` header, if any.

        Returns True when the 429 only shows a request arrived early (the provider's limit
        is the one in force, and such 429s are not repeating): every call waits a moment,
        the pace stays. Otherwise every call waits `retry_after` and the pace halves, then
        recovers; a lower limit in the header becomes the limit in force."""
        now = self._clock()
        self.throttled_count += 1
        recent = self._recent_throttles
        recent.append(now)
        while recent and recent[0] < now - _REPEATED_WITHIN_SLOTS * self.slot_seconds:
            recent.popleft()
        early = requests_limit == self.requests_per_minute and len(recent) < _REPEATED_COUNT
        if requests_limit is not None and requests_limit > 0:
            self._provider_rpm = requests_limit
        if early:
            self.early_count += 1
            wait = _EARLY_PAUSE if retry_after is None else min(retry_after, _EARLY_PAUSE)
            self._paused_until = max(self._paused_until, now + wait)
            return True
        wait = retry_after if retry_after is not None and retry_after > 0 else self.slot_seconds
        self._paused_until = max(self._paused_until, now + wait)
        self._throttle_factor = max(_MIN_PACE_FACTOR, self.pace_factor(now) / 2)
        # Recovery starts when the pause lifts.
        self._last_throttle = self._paused_until
        return False

    # -- tokens ---------------------------------------------------------------------------

    def hold_tokens(self, until: float) -> None:
        """The provider answered 429 naming a token limit (`...-tokens-remaining: 0`): no
        call reserves tokens before `until` (that limit's reset, Unix time), whatever the
        request pause says."""
        self._tokens_held_until = max(self._tokens_held_until, until)

    def estimate_input_tokens(self, chars: int) -> int:
        return max(1, math.ceil(chars * self._input_per_char))

    def estimate_output_tokens(self, max_tokens: int) -> int:
        if self._output_mean is None:
            return max(1, max_tokens // 4)
        return max(1, math.ceil(self._output_mean))

    def settle(self, grant: Grant, chars: int, input_tokens: int, output_tokens: int) -> None:
        """Replace a grant's reserved tokens with what the provider billed; learn from it."""
        grant.input_tokens = input_tokens
        grant.output_tokens = output_tokens
        if input_tokens > 0 and chars > 0:
            self._input_per_char = 0.8 * self._input_per_char + 0.2 * (input_tokens / chars)
        if output_tokens > 0:
            mean = self._output_mean
            self._output_mean = output_tokens if mean is None else 0.8 * mean + 0.2 * output_tokens

    def _token_share(self, now: float) -> float:
        ramp = (now - self._share_changed) / _SHARE_RAMP_SECONDS
        if ramp >= 1.0 or self._share <= self._share_from:
            return self._share
        return self._share_from + (self._share - self._share_from) * max(0.0, ramp)

    def _token_wait(self, now: float, input_tokens: int, output_tokens: int) -> float:
        """Seconds until this call's tokens fit this worker's share of the token limits."""
        if now < self._tokens_held_until:
            return self._tokens_held_until - now
        if self._input_limit is None and self._output_limit is None:
            return 0.0
        while self._spent and self._spent[0].at <= now - 60.0 - _MINUTE_MARGIN:
            self._spent.popleft()
        share = self._token_share(now)
        wait = 0.0
        for limit, want, pick in (
            (self._input_limit, input_tokens, _input_of),
            (self._output_limit, output_tokens, _output_of),
        ):
            if limit is None:
                continue
            allowed = max(1.0, limit * share)
            used = sum(pick(g) for g in self._spent)
            if used + want <= allowed or not self._spent:
                continue
            # Wait until enough of the oldest spending leaves the window.
            over = used + want - allowed
            for grant in self._spent:
                over -= pick(grant)
                if over <= 0:
                    wait = max(wait, grant.at + 60.0 + _MINUTE_MARGIN - now)
                    break
            else:
                wait = max(wait, self._spent[-1].at + 60.0 + _MINUTE_MARGIN - now)
        return wait


def _input_of(grant: Grant) -> int:
    return grant.input_tokens


def _output_of(grant: Grant) -> int:
    return grant.output_tokens
