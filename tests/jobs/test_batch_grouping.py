"""When a batch-lane job's gathered records become a provider batch (pure logic): the rule
is played against arrival times as the lane sees them."""

from __future__ import annotations

import math

from stream_app.jobs.batch_grouping import Gathered, GroupingRule

RULE = GroupingRule(max_requests=1000, quiet_seconds=5.0, max_wait_seconds=60.0)


def play(
    arrivals: list[float], total: int | None, rule: GroupingRule = RULE
) -> list[tuple[int, float, str]]:
    """The provider batches cut from records arriving at `arrivals` (seconds) of a job of
    `total` records (None: not known): (size, when cut, why), as the lane would cut them
    (checked at each arrival and whenever the rule says the next cut is due)."""
    cuts: list[tuple[int, float, str]] = []
    waiting: list[float] = []
    arrived = 0
    last_arrived = False

    def gathered() -> Gathered:
        return Gathered(
            waiting=len(waiting),
            first_at=waiting[0] if waiting else 0.0,
            last_at=waiting[-1] if waiting else 0.0,
            last_arrived=last_arrived,
            more_expected=total is not None and arrived < total,
        )

    def cut_due(now: float) -> None:
        nonlocal waiting
        while waiting and rule.due_in(gathered(), now) == 0:
            why = rule.why(gathered(), now)
            assert why, "due_in said now but why names no rule"
            size = min(len(waiting), rule.max_requests)
            cuts.append((size, now, why))
            waiting = waiting[size:]

    for at in [*arrivals, math.inf]:
        # The timer: cuts due before this arrival happen at their due time.
        while waiting:
            due = rule.due_in(gathered(), 0.0)  # absolute: due_in from time 0
            if due > at:
                break
            cut_due(due)
        if at == math.inf:
            break
        waiting.append(at)
        arrived += 1
        last_arrived = total is not None and arrived >= total
        cut_due(at)
    return cuts


def steady(count: int, per_second: float) -> list[float]:
    return [i / per_second for i in range(count)]


def test_a_big_job_goes_as_full_batches_and_the_last_at_its_last_record() -> None:
    # 20,000 records reaching the lane at 55 a second (what one worker hands over).
    arrivals = steady(20_000, 55)
    cuts = play(arrivals, total=20_000)
    assert [size for size, _, _ in cuts] == [1000] * 20
    assert {why for _, _, why in cuts} == {"full"}
    assert cuts[-1][1] == arrivals[-1]
    # The first batch leaves once its 1,000th record arrived (18 s), not a window later.
    assert cuts[0][1] == arrivals[999]


def test_the_rest_of_a_big_job_goes_when_its_last_record_arrives() -> None:
    arrivals = steady(2500, 55)
    cuts = play(arrivals, total=2500)
    assert [(size, why) for size, _, why in cuts] == [
        (1000, "full"),
        (1000, "full"),
        (500, "last record"),
    ]
    assert cuts[-1][1] == arrivals[-1]


def test_a_small_job_goes_in_one_batch_at_once() -> None:
    arrivals = steady(300, 55)
    cuts = play(arrivals, total=300)
    assert cuts == [(300, arrivals[-1], "last record")]


def test_records_that_stop_coming_go_after_the_quiet_window() -> None:
    # The job's size is not known here (or the rest is on another worker): 100 records,
    # then nothing.
    arrivals = steady(100, 55)
    cuts = play(arrivals, total=None)
    assert cuts == [(100, arrivals[-1] + 5.0, "quiet")]


def test_a_pause_in_a_job_whose_records_are_still_coming_does_not_cut_it_short() -> None:
    # 1,500 records of a 2,000-record job, a 20 s pause (the worker handing them over
    # was busy), then the rest: still two batches, not three.
    arrivals = steady(1500, 55) + [40.0 + t for t in steady(500, 55)]
    cuts = play(arrivals, total=2000)
    assert [(size, why) for size, _, why in cuts] == [(1000, "full"), (1000, "full")]
    # Records that never come (dead-lettered before the lane): the maximum wait.
    cuts = play(steady(1500, 55), total=2000)
    assert [(size, why) for size, _, why in cuts] == [(1000, "full"), (500, "old")]
    assert cuts[-1][1] == steady(1500, 55)[1000] + 60.0


def test_records_that_trickle_in_wait_at_most_the_maximum_wait() -> None:
    # One record every 4 s: never quiet for 5 s, never full.
    arrivals = steady(40, 0.25)
    cuts = play(arrivals, total=None)
    assert sum(size for size, _, _ in cuts) == 40
    assert [why for _, _, why in cuts[:-1]] == ["old"] * (len(cuts) - 1)
    assert cuts[-1][2] == "quiet"
    first = 0
    for size, when, _ in cuts:
        # No record waited longer than BATCH_LANE_MAX_WAIT_SECONDS.
        assert when - arrivals[first] <= 60.0
        first += size
    assert [size for size, _, _ in cuts] == [15, 15, 10]


def test_nothing_waiting_is_never_due_and_a_quiet_batch_is_due_after_the_window() -> None:
    assert RULE.due_in(Gathered(waiting=0, first_at=0.0, last_at=0.0), 100.0) == math.inf
    gathered = Gathered(waiting=10, first_at=0.0, last_at=3.0)
    assert RULE.due_in(gathered, 4.0) == 4.0
    assert RULE.why(gathered, 4.0) == ""
    assert RULE.due_in(gathered, 8.0) == 0.0 and RULE.why(gathered, 8.0) == "quiet"
