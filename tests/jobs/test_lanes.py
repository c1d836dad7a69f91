from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stream_app.jobs.lanes import LivePace, LiveQueue, choose_lane, must_go_live, parse_deadline

PACE = LivePace(requests_per_minute=50)
NOW = 1_000_000.0


def test_explicit_lanes_are_kept() -> None:
    assert choose_lane("live", 20_000, PACE, auto_minutes=30).lane == "live"
    batch = choose_lane("batch", 1, PACE, auto_minutes=30)
    assert (batch.lane, batch.reason) == ("batch", "asked for the batch lane")


def test_auto_picks_by_projected_live_duration() -> None:
    # 30 minutes at 50 requests/minute is 1,500 records.
    assert choose_lane("auto", 1_500, PACE, auto_minutes=30).lane == "live"
    big = choose_lane("auto", 1_501, PACE, auto_minutes=30)
    assert big.lane == "batch"
    assert "1501 records + 0 ahead at 50 requests/minute" in big.reason
    assert "BATCH_LANE_AUTO_MINUTES (30 min)" in big.reason
    assert choose_lane("auto", 20_000, PACE, auto_minutes=30).reason.startswith(
        "auto: projected live duration 6.7 h"
    )


def test_the_live_backlog_ahead_counts() -> None:
    busy = LivePace(requests_per_minute=50, backlog_records=1_400)
    assert choose_lane("auto", 200, busy, auto_minutes=30).lane == "batch"
    assert choose_lane("auto", 100, busy, auto_minutes=30).lane == "live"
    assert busy.seconds_for(100) == 1_800.0


def test_auto_with_a_deadline_takes_the_cheapest_lane_that_makes_it() -> None:
    far = choose_lane("auto", 10, PACE, auto_minutes=30, deadline=NOW + 3 * 3600, now=NOW)
    assert far.lane == "batch" and "before the deadline in 3.0 h" in far.reason
    near = choose_lane("auto", 100, PACE, auto_minutes=30, deadline=NOW + 1800, now=NOW)
    assert near.lane == "live" and "too close for a provider batch" in near.reason
    hopeless = choose_lane("auto", 20_000, PACE, auto_minutes=30, deadline=NOW + 600, now=NOW)
    assert hopeless.lane == "live" and "neither lane" in hopeless.reason


def test_parse_deadline_reads_iso_8601() -> None:
    expected = datetime(2026, 12, 7, 18, 0, tzinfo=UTC).timestamp()
    assert parse_deadline("2026-12-07T18:00:00Z") == expected
    assert parse_deadline("2026-12-07T19:00:00+01:00") == expected
    assert parse_deadline("2026-12-07T18:00:00") == expected
    for bad in ("tomorrow", "", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_deadline(bad)


def test_a_short_projection_is_said_in_seconds() -> None:
    assert (
        "projected live duration 30 s"
        in choose_lane("auto", 300, LivePace(requests_per_minute=600), auto_minutes=30).reason
    )


def test_a_batch_job_goes_live_at_the_last_moment_the_live_lane_can_make_its_deadline() -> None:
    # 100 records at 600 requests/minute: 10 s live, 12.5 s with the safety share, plus
    # a 5 s margin: they wait for their provider batch until 17.5 s before the deadline.
    def go(now: float) -> bool:
        return must_go_live(
            100, deadline=1000.0, now=now, requests_per_minute=600, margin_seconds=5.0
        )

    assert not go(900.0) and not go(982.0)
    assert go(982.5) and go(1000.0) and go(1100.0)
    # Nothing left to do: only a deadline already reached (less the margin) moves it.
    assert not must_go_live(0, deadline=1000.0, now=990.0, requests_per_minute=50, margin_seconds=5)


def test_a_deadline_move_counts_the_live_records_waiting_ahead() -> None:
    # 100 records at 600 requests/minute need 17.5 s with nothing ahead (above). Three other
    # jobs with 1,000 live records waiting: an even share of four, 4 x 10 s x 1.25 + 5 s.
    def go(now: float, ahead: LiveQueue) -> bool:
        return must_go_live(
            100,
            deadline=1000.0,
            now=now,
            requests_per_minute=600,
            margin_seconds=5.0,
            live_ahead=ahead,
        )

    busy = LiveQueue(jobs=3, records=1000)
    assert not go(944.0, busy) and go(945.0, busy)
    # Few records ahead: they are done before the share matters (100 + 20 calls).
    few = LiveQueue(jobs=3, records=20)
    assert not go(979.0, few) and go(980.0, few)
    # FIFO: every record ahead first (LiveQueue counts each as a job).
    fifo = LiveQueue(jobs=200, records=200)
    assert not go(957.4, fifo) and go(957.6, fifo)


def test_the_live_queue_leaves_out_the_job_itself() -> None:
    from stream_app.jobs.scheduler import FairScheduler, FifoScheduler, Ticket, live_queue

    fair: FairScheduler[str] = FairScheduler()
    fifo: FifoScheduler[str] = FifoScheduler()
    for job, count in (("a", 3), ("b", 2), ("own", 5)):
        for i in range(count):
            fair.put(f"{job}{i}", Ticket(tenant="t", job=job))
            fifo.put(f"{job}{i}", Ticket(tenant="t", job=job))
    assert live_queue(fair, "own") == LiveQueue(jobs=2, records=5)
    assert live_queue(fifo, "own") == LiveQueue(jobs=10, records=10)


def test_a_deadline_without_a_zone_is_shown_as_utc() -> None:
    from stream_app.jobs.lanes import with_zone

    assert with_zone("2030-01-01T09:00:00") == "2030-01-01T09:00:00Z"
    assert with_zone("2030-01-01T09:00:00Z") == "2030-01-01T09:00:00Z"
    assert with_zone("2030-01-01T09:00:00+02:00") == "2030-01-01T09:00:00+02:00"
    assert parse_deadline(with_zone("2030-01-01T09:00:00")) == parse_deadline("2030-01-01T09:00:00")


def test_the_batch_lane_asked_for_with_a_close_deadline_says_records_may_go_live() -> None:
    pace = LivePace(requests_per_minute=50)
    close = choose_lane("batch", 100, pace, auto_minutes=30, deadline=1120.0, now=1000.0)
    assert close.lane == "batch"
    assert "deadline in 2 min" in close.reason and "move to the live lane" in close.reason
    far = choose_lane("batch", 100, pace, auto_minutes=30, deadline=9000.0, now=1000.0)
    assert far.reason == "asked for the batch lane"
