"""Serving the API with uvicorn, with the stop order the worker needs.

At SIGTERM/SIGINT the intake gate closes at once (no record starts after the signal), then
uvicorn's graceful HTTP phase runs, then the lifespan drains the calls in flight.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from stream_app.core.logs import get_logger
from stream_app.core.settings import Settings
from stream_app.running.stopping import FAUST_STOP_SECONDS

log = get_logger(__name__)

# How long open HTTP connections (event streams, long downloads) may keep the server up.
HTTP_GRACEFUL_SECONDS = 30
# Asyncio tasks left over once the server has stopped get this long to end.
LEFTOVER_SECONDS = 5
# A stop signal that comes while the worker is still starting (its start can wait minutes
# for a broker that is down) gives the start this long to finish; a worker still starting
# then exits at once, as after a crash: it has committed nothing, so whatever it read is
# read again by the partitions' next owner (at-least-once; known outcomes are not paid
# again).
STARTING_STOP_SECONDS = 2.0


def stop_deadline(settings: Settings) -> float:
    """Seconds from the stop signal after which the process exits whatever still runs:
    the sum of every bounded phase of a stop, plus a margin."""
    return (
        HTTP_GRACEFUL_SECONDS
        + settings.batch_shutdown_timeout_seconds
        + settings.kafka_publish_timeout_seconds
        + FAUST_STOP_SECONDS
        + LEFTOVER_SECONDS
        + 30
    )


def exit_now(code: int) -> None:
    """Exit with `code` without waiting for threads that outlived the stop.

    When the broker is gone, Faust's consumer thread can stay stuck in aiokafka's retries
    after the bounded stop gave up on it, and a normal interpreter exit would wait for it
    forever: a stopped worker must not hang. Logs are flushed first; every state that must
    survive is in Kafka or already closed by the stop.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_after(seconds: float, code: int, before: Callable[[], None] | None = None) -> None:
    """From a daemon timer: if the process still runs `seconds` from now, call `before`
    (what to do on the way out), then exit_now(`code`). A stop must end."""

    def expire() -> None:
        log.warning("exiting now", code=code, after_seconds=seconds)
        if before is not None:
            before()
        exit_now(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _dump_threads() -> None:
    """Every thread's stack on stderr: what the stop hung on."""
    print("the stop did not end in time. Threads:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, on_signal: list[Callable[[], None]], deadline: float
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._deadline = deadline
        self._stopping = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._stopping:
            self._stopping = True
            exit_after(self._deadline, 1, before=_dump_threads)
            if not self.started:
                self._exit_if_still_starting()
        for hook in self._on_signal:
            hook()
        super().handle_exit(sig, frame)

    def _exit_if_still_starting(self) -> None:
        """uvicorn handles a signal only once the lifespan has started, and the start waits
        for the broker without a bound of its own (seen: a worker started while the broker
        restarted was SIGKILLed 15 s after its SIGTERM)."""

        def expire() -> None:
            if not self.started:
                log.warning("stopped while starting: exiting", after_seconds=STARTING_STOP_SECONDS)
                exit_now(0)

        timer = threading.Timer(STARTING_STOP_SECONDS, expire)
        timer.daemon = True
        timer.start()

    def run(self, sockets: Any = None) -> None:
        """uvicorn's run, without waiting at the end for what the stop left behind.

        asyncio.run would then wait, without a bound, for every leftover task and for the
        default executor's threads; with the broker gone, aiokafka's can hang there (seen
        in tests/test_broker_failures.py). Leftover tasks get LEFTOVER_SECONDS; the
        process exits right after (exit_now).
        """
        factory = self.config.get_loop_factory()
        loop = factory() if factory is not None else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve(sockets=sockets))
        finally:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_SECONDS))


def serve(app: Starlette, settings: Settings) -> int:
    """Run `app` until a signal; returns the process exit code: 0 after a requested stop,
    1 when the worker stopped itself because it could not become ready (`app.state.fatal`),
    3 when it could not start at all.
    """
    state: Any = app.state
    on_signal: list[Callable[[], None]] = state.on_signal
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # uvicorn's loggers go through the process's handler (stream_app.core.logs): one format.
        log_config=None,
        timeout_graceful_shutdown=HTTP_GRACEFUL_SECONDS,
        # The standard event loop, even where uvloop is installed (uvicorn's "auto" would
        # take it): the Faust workarounds (stream_app.kafka.faust_fixes) were measured on it, and
        # uvloop was not faster here (bench.overhead, 6,000 records, three runs each:
        # worker CPU 3.4-4.0 ms per record against 3.5-3.6) while result visibility got
        # worse (p50 0.4-1.1 s against 0.2 s).
        loop="asyncio",
    )
    server = _Server(config, on_signal, stop_deadline(settings))
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn raises the signal it caught again once it has shut down; the stop is
        # done by then.
        pass
    if not server.started:
        return 3  # the lifespan failed to start (uvicorn's own STARTUP_FAILURE code)
    return 1 if getattr(state, "fatal", None) else 0
