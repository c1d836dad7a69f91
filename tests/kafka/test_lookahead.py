"""The look-ahead and its call slots, in virtual time (tests/fake_clock.py): a small job
behind a big one, FIFO against fair, bounded memory, records dropped on revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from stream_app.jobs.scheduler import FairScheduler, FifoScheduler, Scheduler, Ticket
from stream_app.kafka.lookahead import DEFAULT_LANE, LookAhead
from tests.fake_clock import FakeClock

SLOT_SECONDS = 0.1  # 600 requests a minute


async def records(jobs: list[tuple[str, int]]) -> AsyncIterator[str]:
    """What one partition delivers: every record of each job in turn."""
    for job, count in jobs:
        for index in range(count):
            yield f"{job}:{index}"


def classify(item: str) -> tuple[Ticket, int]:
    return Ticket("", item.partition(":")[0]), 100


async def small_job_times(scheduler: Scheduler[str], lookahead_records: int) -> tuple[float, float]:
    """Seconds from start to the small job's first and last outcome, one call a slot."""
    clock = FakeClock()
    lookahead: LookAhead[str] = LookAhead(scheduler, max_records=lookahead_records, max_bytes=10**9)
    done: dict[str, float] = {}
    start = clock.now
    provider = asyncio.Lock()  # the rate budget: one call per slot, first come first served

    async def handle(item: str) -> None:
        async with provider:
            await clock.sleep(SLOT_SECONDS)
        done[item] = clock.now - start

    try:
        source = records([("big", 600), ("small", 5)])
        await lookahead.serve(source, classify, handle, slots=5)
    finally:
        clock.close()
    small = [t for item, t in done.items() if item.startswith("small")]
    assert len(done) == 605
    return min(small), max(small)


async def test_a_small_job_behind_a_big_one_finishes_in_seconds_not_after_it() -> None:
    first, last = await small_job_times(FairScheduler(), lookahead_records=1000)
    # Read at once (the look-ahead reaches it), then every other slot is its.
    assert last <= 2.0, (first, last)
    fifo_first, fifo_last = await small_job_times(FifoScheduler(), lookahead_records=1000)
    assert fifo_first >= 60.0  # after the 600 records of the big job, at 10 a second
    print(f"fair: first {first:.1f} s last {last:.1f} s; fifo: {fifo_first:.1f} {fifo_last:.1f}")


async def test_a_small_job_beyond_the_look_ahead_waits_for_the_records_before_it() -> None:
    # The honest bound: with 200 records of look-ahead, the small job is read once the
    # big job has only 200 records left unread, i.e. after 400 of its records.
    first, last = await small_job_times(FairScheduler(), lookahead_records=200)
    assert 39.0 <= first and last <= 42.0, (first, last)


async def test_the_look_ahead_holds_at_most_its_bound() -> None:
    lookahead: LookAhead[str] = LookAhead(FairScheduler(), max_records=3, max_bytes=250)
    reader = asyncio.create_task(_put_all(lookahead, [f"j:{n}" for n in range(10)], size=100))
    await asyncio.sleep(0.01)
    assert len(lookahead) == 3 and lookahead.bytes == 300  # bytes passed 250 at the 3rd
    assert await lookahead.take() == "j:0"
    await asyncio.sleep(0.01)
    assert len(lookahead) == 3
    reader.cancel()


async def test_one_record_larger_than_the_byte_bound_still_gets_in() -> None:
    lookahead: LookAhead[str] = LookAhead(FairScheduler(), max_records=3, max_bytes=10)
    await asyncio.wait_for(lookahead.put("huge:0", Ticket("", "huge"), 1000), 1)
    assert await lookahead.take() == "huge:0" and lookahead.bytes == 0


async def test_dropped_records_free_their_room() -> None:
    lookahead: LookAhead[str] = LookAhead(FairScheduler(), max_records=2, max_bytes=10**6)
    await lookahead.put("a:0", Ticket("", "a"), 10)
    await lookahead.put("b:0", Ticket("", "b"), 10)
    blocked = asyncio.create_task(lookahead.put("c:0", Ticket("", "c"), 10))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert lookahead.drop(lambda item: item.startswith("a")) == 1
    await asyncio.wait_for(blocked, 1)
    assert [await lookahead.take(), await lookahead.take()] == ["b:0", "c:0"]


async def _put_all(
    lookahead: LookAhead[str], items: list[str], size: int, lane: str = DEFAULT_LANE
) -> None:
    for item in items:
        await lookahead.put(item, Ticket("", item.partition(":")[0]), size, lane)


BULK = "batch.records.bulk"
DEFAULT = "batch.records"


async def test_a_small_job_in_its_own_lane_is_read_at_once_behind_any_backlog() -> None:
    # 20,000 records of a big job in the bulk lane, 100 times what the look-ahead holds; the
    # small job's 40 records come on the default lane once the big job has run a second.
    # The small job is read at once; after the calls already waiting for the provider (one
    # per slot), it takes every other call: 40 records in 8 s at 10 calls a second. In one
    # lane it would wait for the 20,000 records before it: over half an hour.
    clock = FakeClock()
    lookahead: LookAhead[str] = LookAhead(
        FairScheduler(), max_records=200, max_bytes=10**9, lanes=(DEFAULT, BULK)
    )
    done: dict[str, float] = {}
    start = clock.now
    provider = asyncio.Lock()

    async def handle(item: str) -> None:
        async with provider:
            await clock.sleep(SLOT_SECONDS)
        done[item] = clock.now - start

    async def small_job() -> AsyncIterator[str]:
        await clock.sleep(1.0)
        for index in range(40):
            yield f"small:{index}"

    bulk = asyncio.create_task(lookahead.feed(records([("big", 20_000)]), classify, BULK))
    serving = asyncio.create_task(lookahead.serve(small_job(), classify, handle, 5, DEFAULT))
    try:
        await clock.sleep(12.0)
        small = [t for item, t in done.items() if item.startswith("small")]
        assert len(small) == 40, len(small)
        queued = 1.0 + 6 * SLOT_SECONDS + 0.01  # the slots' waiting calls, then its first
        assert min(small) <= queued and max(small) <= queued + 39 * 2 * SLOT_SECONDS, small
        # Each lane held at most its half of the look-ahead all along.
        assert lookahead.held(BULK) == 100 and lookahead.held(DEFAULT) == 0
    finally:
        bulk.cancel()
        serving.cancel()
        await asyncio.gather(bulk, serving, return_exceptions=True)
        clock.close()


async def test_a_full_lane_does_not_hold_back_the_other() -> None:
    lookahead: LookAhead[str] = LookAhead(
        FifoScheduler(), max_records=4, max_bytes=10**6, lanes=(DEFAULT, BULK)
    )
    bulk = asyncio.create_task(_put_all(lookahead, [f"big:{n}" for n in range(10)], 10, BULK))
    await asyncio.sleep(0.01)
    assert lookahead.held(BULK) == 2 and not bulk.done()  # its share: half of 4
    await asyncio.wait_for(lookahead.put("small:0", Ticket("", "small"), 10, DEFAULT), 1)
    await asyncio.wait_for(lookahead.put("small:1", Ticket("", "small"), 10, DEFAULT), 1)
    assert len(lookahead) == 4 and lookahead.bytes == 40
    # The bulk lane gets room back only from its own records.
    assert await lookahead.take() == "big:0"
    await asyncio.sleep(0.01)
    assert lookahead.held(BULK) == 2 and lookahead.held(DEFAULT) == 2
    bulk.cancel()
