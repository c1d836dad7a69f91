"""How long each part of a stop may take, decided when the stop begins: with the broker gone,
nothing the stop sends can be acknowledged and no offset can be committed, so waiting for
them only delays the exit (a worker given SIGTERM while its broker was down took over 18 s
and had to be killed; measured 30 s, all of it Faust's stop waiting for the broker).

What is lost by not waiting is nothing a restart does not redo: outcomes the broker has not
acknowledged were not committed either, so their records are delivered again (their calls
may be paid again: at most those that finished while the broker was down).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import faust
from faust.contrib.asgi import bind_to_running_loop

from stream_app.core.logs import get_logger

log = get_logger(__name__)

# Faust's own stop (commit, consumer, tables, producer) with the broker up.
FAUST_STOP_SECONDS = 30.0
# With the broker down: the last flush of what was produced, and Faust's stop.
FLUSH_SECONDS_BROKER_DOWN = 2.0
FAUST_STOP_SECONDS_BROKER_DOWN = 4.0
# How long the stop asks the broker whether it answers.
BROKER_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class StopPlan:
    """Seconds each bounded part of a stop may take."""

    broker_up: bool
    flush_seconds: float
    faust_stop_seconds: float


def plan_stop(broker_up: bool, publish_timeout_seconds: float) -> StopPlan:
    """The stop's bounds: with the broker up, the final flush may take
    KAFKA_PUBLISH_TIMEOUT_SECONDS (`publish_timeout_seconds`) and Faust's stop
    FAUST_STOP_SECONDS; with the broker down, a few seconds each."""
    if broker_up:
        return StopPlan(True, publish_timeout_seconds, FAUST_STOP_SECONDS)
    return StopPlan(False, FLUSH_SECONDS_BROKER_DOWN, FAUST_STOP_SECONDS_BROKER_DOWN)


@asynccontextmanager
async def faust_running(app: faust.App, stop_seconds: Callable[[], float]) -> AsyncIterator[None]:
    """Run `app` on the running loop (as faust.contrib.asgi.faust_app_running does) and
    stop it on exit within `stop_seconds()` seconds, asked when the stop begins. A stop
    that does not end in time is logged and left behind (the process exits without
    waiting for Faust's threads: stream_app.running.server.exit_now)."""
    bind_to_running_loop(app)
    app.finalize()
    started = await app.maybe_start()
    try:
        yield
    finally:
        if started:
            seconds = stop_seconds()
            try:
                await asyncio.wait_for(app.stop(), timeout=seconds)
            except TimeoutError:
                log.warning("Faust did not stop in time; exiting without it", seconds=seconds)
