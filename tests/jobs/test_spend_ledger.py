"""The cluster's spend ledgers: the rule every worker applies alike to `batch.spend`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from stream_app.jobs.spend_ledger import (
    Entry,
    LocalSpend,
    SpendLedgers,
    Verdict,
    job_ledger,
    tenant_ledger,
)

D = Decimal
LIMIT = D("1.00")


def reserve(record: str, expected: str, most: str, ledger: str = "job:j") -> Entry:
    return Entry("reserve", ledger, record, D(expected), D(most), LIMIT)


def test_reservations_fit_by_their_most_while_others_are_in_flight() -> None:
    ledgers = SpendLedgers()
    assert ledgers.apply(reserve("j:0", "0.10", "0.40"), 0) is Verdict.ADMIT
    assert ledgers.apply(reserve("j:1", "0.10", "0.40"), 0) is Verdict.ADMIT
    # 0.40 + 0.40 + 0.40 > 1.00: wait for the calls in flight (they may cost less).
    assert ledgers.apply(reserve("j:2", "0.10", "0.40"), 0) is Verdict.WAIT
    ledgers.apply(Entry("settle", "job:j", "j:0", D("0.12")), 1)
    ledgers.apply(Entry("settle", "job:j", "j:0", D("0.12")), 1)  # read twice: counted once
    assert ledgers.spent("job:j") == D("0.12")
    assert ledgers.apply(reserve("j:2", "0.10", "0.40"), 2) is Verdict.ADMIT  # 0.12+0.8
    ledgers.apply(Entry("settle", "job:j", "j:1", D("0.40")), 3)
    ledgers.apply(Entry("release", "job:j", "j:2"), 3)  # made no call after all
    # Alone, a call goes when its expected cost fits, even if its most would not.
    assert ledgers.apply(reserve("j:3", "0.30", "0.60"), 4) is Verdict.ADMIT
    ledgers.apply(Entry("settle", "job:j", "j:3", D("0.35")), 5)
    # The spend alone (0.87) leaves no room for 0.15: refused, and for good.
    assert ledgers.apply(reserve("j:4", "0.15", "0.40"), 6) is Verdict.REFUSE
    assert ledgers.apply(reserve("j:5", "0.01", "0.01"), 6) is Verdict.REFUSE
    assert ledgers.exhausted("job:j")
    # A record whose outcome is known is never refused (a redelivery re-sends it).
    assert ledgers.apply(reserve("j:0", "5", "5"), 7) is Verdict.ADMIT


def test_a_dead_workers_reservation_expires_by_log_time() -> None:
    ledgers = SpendLedgers(ttl_seconds=60)
    assert ledgers.apply(reserve("j:0", "0.10", "0.90"), 0) is Verdict.ADMIT
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 30) is Verdict.WAIT
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 61) is Verdict.ADMIT


def test_the_bill_passes_the_limit_by_at_most_one_call() -> None:
    """Any interleaving of two workers' reservations and settlements: the billed total
    stays within the limit plus one call's cost beyond its expectation."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        ledgers = SpendLedgers()
        in_flight: dict[str, D] = {}
        billed = D(0)
        largest = D(0)
        for step in range(400):
            if in_flight and (rng.random() < 0.5 or len(in_flight) > 20):
                record = rng.choice(sorted(in_flight))
                cost = in_flight.pop(record)
                ledgers.apply(Entry("settle", "job:j", record, cost), step)
                billed += cost
                largest = max(largest, cost)
                continue
            record = f"j:{step}"
            cost = D(rng.randint(5, 40)) / 1000  # actual, up to the most
            verdict = ledgers.apply(reserve(record, "0.02", "0.04"), step)
            if verdict is Verdict.ADMIT:
                in_flight[record] = cost
        billed += sum(in_flight.values(), D(0))
        assert billed <= LIMIT + D("0.04"), (seed, billed)


def test_ledger_names() -> None:
    assert job_ledger("abc") == "job:abc"
    assert tenant_ledger("alpha", datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        "tenant:alpha:2026-12"
    )
    entry = reserve("j:1", "0.1", "0.2", ledger="tenant:alpha:2026-12")
    assert Entry.from_json({**entry.to_json(), "request": "r"}) == Entry(
        **{**entry.__dict__, "request": "r"}
    )


async def test_local_grants_wait_for_a_settlement() -> None:
    spend = LocalSpend()
    assert await spend.reserve("job:j", "j:0", D("0.1"), D("0.6"), LIMIT) is Verdict.ADMIT
    waiting = asyncio.create_task(spend.reserve("job:j", "j:1", D("0.1"), D("0.6"), LIMIT))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    spend.settle("job:j", "j:0", D("0.1"))
    assert await asyncio.wait_for(waiting, 1) is Verdict.ADMIT
