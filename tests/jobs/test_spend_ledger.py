"""The cluster's spend ledgers: the rule every worker applies alike to `batch.spend`."""

from __future__ import annotations

import asyncio
import time
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


def renew(record: str, ledger: str = "job:j") -> Entry:
    return Entry("renew", ledger, record)


def test_a_renewed_reservation_outlives_the_ttl_and_lapses_one_ttl_after_its_last_renewal() -> None:
    """A provider batch runs for an hour or more: its worker renews its reservations every
    third of the TTL, and they hold the cap all along; once renewals stop (the worker
    died), they lapse one TTL after the last one."""
    ledgers = SpendLedgers(ttl_seconds=60)
    assert ledgers.apply(reserve("j:0", "0.10", "0.90"), 0) is Verdict.ADMIT
    for at in range(20, 121, 20):  # renewed for 2 x TTL
        ledgers.apply(renew("j:0"), at)
        assert ledgers.apply(reserve("j:1", "0.10", "0.90"), at + 1) is Verdict.WAIT
    assert ledgers.outstanding("job:j") == 1
    # No renewal since 120: held until 180 of log time, dropped after.
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 179) is Verdict.WAIT
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 181) is Verdict.ADMIT


def test_an_unrenewed_reservation_is_dropped_after_the_ttl() -> None:
    ledgers = SpendLedgers(ttl_seconds=60)
    assert ledgers.apply(reserve("j:0", "0.10", "0.90"), 0) is Verdict.ADMIT
    ledgers.apply(renew("j:other"), 30)  # someone else's renewal keeps only its own
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 59) is Verdict.WAIT
    assert ledgers.apply(reserve("j:1", "0.10", "0.90"), 61) is Verdict.ADMIT


def test_one_renewal_keeps_every_reservation_of_a_provider_batch() -> None:
    ledgers = SpendLedgers(ttl_seconds=60)
    for index in range(3):
        record = f"lane:j:{index}:tok1"
        assert ledgers.apply(reserve(record, "0.10", "0.20"), 0) is Verdict.ADMIT
    assert ledgers.apply(reserve("lane:j:3:tok2", "0.10", "0.20"), 0) is Verdict.ADMIT
    ledgers.apply(renew("*:tok1"), 50)
    ledgers.apply(renew("*:tok1"), 100)
    # tok2's batch was not renewed: dropped; tok1's three still hold 0.60 of the 1.00.
    assert ledgers.outstanding("job:j") == 3
    assert ledgers.apply(reserve("j:9", "0.10", "0.50"), 101) is Verdict.WAIT
    assert ledgers.apply(reserve("j:9", "0.10", "0.40"), 101) is Verdict.ADMIT


def test_a_renewal_does_not_bring_back_what_ended() -> None:
    """Settled, released and expired reservations stay so when a renewal is read after
    them (a renewal sent before the settlement, or by a worker that came back late)."""
    ledgers = SpendLedgers(ttl_seconds=60)
    for record in ("j:0", "j:1", "j:2"):
        assert ledgers.apply(reserve(record, "0.10", "0.30"), 0) is Verdict.ADMIT
    ledgers.apply(Entry("settle", "job:j", "j:0", D("0.12")), 10)
    ledgers.apply(Entry("release", "job:j", "j:1"), 10)
    for record in ("j:0", "j:1"):
        ledgers.apply(renew(record), 11)
    assert ledgers.outstanding("job:j") == 1
    ledgers.apply(renew("j:2"), 70)  # read after j:2 lapsed (made at 0, TTL 60)
    assert ledgers.outstanding("job:j") == 0
    assert ledgers.spent("job:j") == D("0.12")


def test_every_worker_folds_renewals_alike() -> None:
    """The same entries in the same order (one ledger, one partition) give every worker
    the same spend, reservations and verdicts."""
    entries: list[tuple[Entry, float]] = [
        (reserve("lane:j:0:t", "0.20", "0.45"), 0),
        (reserve("lane:j:1:t", "0.20", "0.45"), 1),
        (renew("*:t"), 40),
        (reserve("j:2", "0.05", "0.20"), 41),
        (renew("*:t"), 80),
        (reserve("j:2", "0.05", "0.20"), 90),
        (Entry("settle", "job:j", "lane:j:0:t", D("0.21")), 100),
        (reserve("j:2", "0.05", "0.20"), 101),
        (reserve("j:3", "0.05", "0.20"), 200),
    ]
    workers = [SpendLedgers(ttl_seconds=60) for _ in range(2)]
    verdicts = [[w.apply(entry, at) for entry, at in entries] for w in workers]
    assert verdicts[0] == verdicts[1]
    assert [v for v in verdicts[0] if v is not None] == [
        Verdict.ADMIT,
        Verdict.ADMIT,
        Verdict.WAIT,  # both batch requests still held at 41 (renewed at 40)
        Verdict.WAIT,  # and at 90 (renewed at 80)
        Verdict.ADMIT,  # one settled at 100: 0.21 + 0.45 + 0.20 fits
        Verdict.ADMIT,  # 200: lane:j:1 lapsed (last renewed at 80), j:2 too
    ]
    assert {w.spent("job:j") for w in workers} == {D("0.21")}
    assert {w.outstanding("job:j") for w in workers} == {1}


def test_a_renewal_entry_reads_back() -> None:
    entry = renew("*:tok", ledger="tenant:alpha:2026-12")
    assert Entry.from_json(entry.to_json()) == entry


def test_local_grants_renew() -> None:
    ledgers = SpendLedgers(ttl_seconds=3600)
    spend = LocalSpend(ledgers)
    ledgers.apply(reserve("lane:j:0:t", "0.1", "0.2"), time.time() - 3000)
    spend.renew("job:j", "*:t")  # at the wall clock's time: held an hour from now
    assert ledgers.apply(reserve("j:1", "0.1", "0.9"), time.time() + 3000) is Verdict.WAIT


def test_a_worker_taking_a_provider_batch_over_keeps_and_settles_its_reservations() -> None:
    """Worker A reserved two requests of a provider batch (token `tok`) and died; worker B
    follows the batch from its intent: it renews them, settles what ends, and releases
    what never ran, under the ids A reserved them with."""
    from schemas import ResultEvent
    from stream_app.jobs.aggregation import result_key
    from stream_app.jobs.job_rules import JobRules
    from stream_app.provider.pricing import price_for

    ledgers = SpendLedgers(ttl_seconds=60)
    now = time.time()
    ids = [f"lane:{result_key('j', i)}:tok" for i in range(3)]
    for record in ids:  # worker A's reservations, 100 s of log time ago
        assert ledgers.apply(reserve(record, "0.10", "0.20"), now - 100) is Verdict.ADMIT
    ledgers.apply(renew("*:tok"), now - 50)  # A's last renewal
    worker_b = JobRules(None, price_for, spend=LocalSpend(ledgers))  # type: ignore[arg-type]
    worker_b.adopt_batch_reservations("j", "tok", {"job:j": [0, 1, 2]})
    worker_b.renew_batch("tok", ["job:j"])
    assert ledgers.outstanding("job:j") == 3  # renewed before A's lapsed (at now + 10)
    failed = ResultEvent(
        job_id="j", index=0, success=False, error="x", lane="batch", model="claude-sonnet-4-5"
    )
    worker_b.settle(failed, batch_lane=True)
    worker_b.release_batch_request("j", 1)
    assert ledgers.outstanding("job:j") == 1
    assert worker_b.batch_reservations("j", [0, 1, 2]) == {"job:j": [2]}
