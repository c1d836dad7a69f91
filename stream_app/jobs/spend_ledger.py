"""Spend shared by the cluster: a job's spending cap and a tenant's budget hold with any
number of workers. Pure logic (no Kafka): `stream_app.kafka.spend_log` writes the entries
and feeds every worker's `SpendLedgers` with them in the log's order.

Every spend-limited thing is a *ledger*: a capped job (`job:<job_id>`) or a tenant's budget
for a calendar month (`tenant:<name>:<YYYY-MM>`, UTC). Before a record's first call, its
worker appends a `reserve` entry to the `batch.spend` topic, keyed by the ledger, so every
entry of one ledger is in one partition, in one order that every worker reads alike. Each
worker folds the same entries in the same order with the same rule, so each reaches the
same verdict on each reservation without asking anyone: the requester waits until it reads
its own entry back and applies the verdict (no owner to fail over, no lock; a Kafka
partition is the serialisation point, as a Raft log would be). After the record's
outcome its worker appends `settle` (what the record billed in all) or `release` (no call
was made).

The rule, for a reservation of a call expected to cost `expected` and at most `most` (USD;
the most is its prompt with max_tokens of output):
- REFUSE when the spend alone leaves no room for the expected cost (the ledger is
  exhausted: every later reservation is refused too);
- WAIT when other reservations are outstanding and the most they and this call can cost
  would pass the limit (they may cost less: ask again when one settles);
- otherwise ADMIT (outstanding until settled or released).

So calls admitted while others are in flight fit under the limit even if each costs its
most, and a call admitted alone fits by its expected cost: the bill passes the limit by at
most that one call's cost beyond its expectation, with any number of workers (retries of a
record are the one exception: each attempt may cost its most again). A reservation whose
worker died is dropped after RESERVATION_TTL_SECONDS of log time (the entries' timestamps).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

# Longer than any call can take (call timeouts grow with max_tokens: 4,096 tokens is ~3 min).
RESERVATION_TTL_SECONDS = 900.0


class Verdict(Enum):
    ADMIT = "admit"  # reserved: the call may go
    WAIT = "wait"  # fits only once calls in flight have settled (they may cost less)
    REFUSE = "refuse"  # the spend alone leaves no room: the ledger is exhausted


def job_ledger(job_id: str) -> str:
    return f"job:{job_id}"


def tenant_ledger(tenant: str, when: datetime | None = None) -> str:
    """The ledger of `tenant`'s budget for the calendar month (UTC) of `when` (now)."""
    month = (when or datetime.now(UTC)).strftime("%Y-%m")
    return f"tenant:{tenant}:{month}"


@dataclass(frozen=True)
class Entry:
    """One entry of the `batch.spend` topic (plain JSON, key: the ledger)."""

    kind: str  # "reserve" | "settle" | "release" | "renew"
    ledger: str
    # The reservation: "<job_id>:<index>:<id>", one per call of a record (a record run
    # twice around a rebalance is two reservations: the provider bills both calls).
    record: str
    usd: Decimal = Decimal(0)
    most_usd: Decimal = Decimal(0)
    limit_usd: Decimal = Decimal(0)
    request: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "ledger": self.ledger,
            "record": self.record,
            "usd": str(self.usd),
            "most_usd": str(self.most_usd),
            "limit_usd": str(self.limit_usd),
            "request": self.request,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """Raises KeyError / ValueError / ArithmeticError on an entry that is not one."""
        kind = data["type"]
        if kind not in ("reserve", "settle", "release", "renew"):
            raise ValueError(f"unknown spend entry type {kind!r}")
        return cls(
            kind=kind,
            ledger=str(data["ledger"]),
            record=str(data["record"]),
            usd=Decimal(str(data.get("usd", "0"))),
            most_usd=Decimal(str(data.get("most_usd", "0"))),
            limit_usd=Decimal(str(data.get("limit_usd", "0"))),
            request=str(data.get("request", "")),
        )


@dataclass
class _Ledger:
    limit: Decimal
    billed: dict[str, Decimal] = field(default_factory=dict)
    # index -> (most USD, log time of the reservation)
    outstanding: dict[str, tuple[Decimal, float]] = field(default_factory=dict)
    exhausted: bool = False
    spent: Decimal = Decimal(0)


class SpendLedgers:
    """Every ledger's spend and outstanding reservations, folded from `batch.spend`."""

    def __init__(self, ttl_seconds: float = RESERVATION_TTL_SECONDS) -> None:
        self._ledgers: dict[str, _Ledger] = {}
        self._ttl = ttl_seconds

    def clear(self) -> None:
        """Forget everything (the log is read again from its beginning)."""
        self._ledgers.clear()

    def apply(self, entry: Entry, log_time: float) -> Verdict | None:
        """Fold one entry read at `log_time` (its Kafka timestamp, Unix seconds); a
        reservation's verdict, None for other entries."""
        ledger = self._ledgers.get(entry.ledger)
        if ledger is None:
            ledger = self._ledgers[entry.ledger] = _Ledger(entry.limit_usd)
        self._expire(ledger, log_time)
        if entry.kind == "settle":
            ledger.outstanding.pop(entry.record, None)
            if entry.record not in ledger.billed:
                ledger.billed[entry.record] = entry.usd
                ledger.spent += entry.usd
            return None
        if entry.kind == "release":
            ledger.outstanding.pop(entry.record, None)
            return None
        if entry.kind == "renew":
            # One reservation, or (`*:<token>`) every reservation whose id ends `:<token>`
            # (a provider batch's: one entry renews its thousand requests). Expired,
            # settled or released ones stay so.
            suffix = entry.record[1:] if entry.record.startswith("*:") else None
            for record, (most, _) in list(ledger.outstanding.items()):
                if record == entry.record or (suffix is not None and record.endswith(suffix)):
                    ledger.outstanding[record] = (most, log_time)
            return None
        return self._reserve(ledger, entry, log_time)

    def _reserve(self, ledger: _Ledger, entry: Entry, log_time: float) -> Verdict:
        if entry.limit_usd > 0:
            ledger.limit = entry.limit_usd  # a tenant's budget may be changed by config
        if entry.record in ledger.billed:
            return Verdict.ADMIT  # settled already (the same entry read again)
        if ledger.exhausted:
            return Verdict.REFUSE
        if ledger.spent + entry.usd > ledger.limit:
            ledger.exhausted = True
            return Verdict.REFUSE
        others = {i: v for i, v in ledger.outstanding.items() if i != entry.record}
        if others:
            committed = ledger.spent + sum((most for most, _ in others.values()), Decimal(0))
            if committed + entry.most_usd > ledger.limit:
                return Verdict.WAIT
        ledger.outstanding[entry.record] = (entry.most_usd, log_time)
        return Verdict.ADMIT

    def _expire(self, ledger: _Ledger, log_time: float) -> None:
        stale = [i for i, (_, at) in ledger.outstanding.items() if log_time - at > self._ttl]
        for record in stale:
            del ledger.outstanding[record]

    def spent(self, ledger: str) -> Decimal:
        """USD billed in this ledger as far as read."""
        found = self._ledgers.get(ledger)
        return found.spent if found is not None else Decimal(0)

    def exhausted(self, ledger: str, limit: Decimal | None = None) -> bool:
        """Whether the ledger refuses new calls: refused one, or its spend has reached
        `limit` (its own limit when None)."""
        found = self._ledgers.get(ledger)
        if found is None:
            return limit is not None and limit <= 0
        return found.exhausted or found.spent >= (limit if limit is not None else found.limit)

    def outstanding(self, ledger: str) -> int:
        found = self._ledgers.get(ledger)
        return len(found.outstanding) if found is not None else 0


class SpendGrants(Protocol):
    """Where reservations are decided: `stream_app.kafka.spend_log.SpendLog` for the
    cluster, `LocalSpend` within one process."""

    ledgers: SpendLedgers

    async def reserve(
        self,
        ledger: str,
        record: str,
        expected: Decimal,
        most: Decimal,
        limit: Decimal,
        *,
        wait: bool = True,
    ) -> Verdict:
        """ADMIT or REFUSE (waits while WAIT; with `wait=False` answers WAIT instead)."""
        ...

    def settle(self, ledger: str, record: str, usd: Decimal) -> None: ...

    def release(self, ledger: str, record: str) -> None: ...

    def renew(self, ledger: str, record: str) -> None:
        """The reservation's call is still in flight: its TTL starts again. `record`: a
        reservation's id, or `*:<token>` for every reservation whose id ends `:<token>`."""
        ...


class LocalSpend:
    """The ledgers of one process, entries folded as they are made (no Kafka): for tests
    and tools that run without a cluster."""

    def __init__(self, ledgers: SpendLedgers | None = None) -> None:
        self.ledgers = ledgers or SpendLedgers()
        self._changed: dict[str, asyncio.Event] = {}

    async def reserve(
        self,
        ledger: str,
        record: str,
        expected: Decimal,
        most: Decimal,
        limit: Decimal,
        *,
        wait: bool = True,
    ) -> Verdict:
        while True:
            entry = Entry("reserve", ledger, record, expected, most, limit)
            verdict = self.ledgers.apply(entry, time.time())
            if verdict is not None and (verdict is not Verdict.WAIT or not wait):
                return verdict
            await self._changed.setdefault(ledger, asyncio.Event()).wait()

    def settle(self, ledger: str, record: str, usd: Decimal) -> None:
        self.ledgers.apply(Entry("settle", ledger, record, usd), time.time())
        self._wake(ledger)

    def release(self, ledger: str, record: str) -> None:
        self.ledgers.apply(Entry("release", ledger, record), time.time())
        self._wake(ledger)

    def renew(self, ledger: str, record: str) -> None:
        self.ledgers.apply(Entry("renew", ledger, record), time.time())

    def _wake(self, ledger: str) -> None:
        event = self._changed.pop(ledger, None)
        if event is not None:
            event.set()
