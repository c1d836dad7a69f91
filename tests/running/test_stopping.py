"""The bounds of a stop, decided when it begins."""

from stream_app.running.stopping import (
    FAUST_STOP_SECONDS,
    FAUST_STOP_SECONDS_BROKER_DOWN,
    FLUSH_SECONDS_BROKER_DOWN,
    plan_stop,
)


def test_a_stop_waits_for_the_broker_only_while_it_answers() -> None:
    up = plan_stop(True, publish_timeout_seconds=30.0)
    assert (up.flush_seconds, up.faust_stop_seconds) == (30.0, FAUST_STOP_SECONDS)
    down = plan_stop(False, publish_timeout_seconds=30.0)
    assert (down.flush_seconds, down.faust_stop_seconds) == (
        FLUSH_SECONDS_BROKER_DOWN,
        FAUST_STOP_SECONDS_BROKER_DOWN,
    )
    # With the broker down, a stop ends within the documented 15 s after the calls in
    # flight: the broker probe (2 s), the flush and Faust's stop, and leftovers (5 s).
    assert 2 + down.flush_seconds + down.faust_stop_seconds + 5 <= 15
