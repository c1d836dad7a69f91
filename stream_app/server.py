"""Serving the API with uvicorn, with the stop order the worker needs.

At SIGTERM/SIGINT the intake gate closes at once (no record starts after the signal), then
uvicorn's graceful HTTP phase runs, then the lifespan drains the calls in flight.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from stream_app.settings import Settings

# How long open HTTP connections (event streams, long downloads) may keep the server up.
HTTP_GRACEFUL_SECONDS = 30
# Faust's own stop (faust_app_running(stop_timeout=...) in stream_app/service.py).
FAUST_STOP_SECONDS = 30
# Asyncio tasks left over once the server has stopped get this long to end.
LEFTOVER_SECONDS = 5


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


def _exit_at(deadline: float) -> None:
    """From a daemon thread: if the process still runs `deadline` seconds from now, print
    every thread's stack (to find what hung) and exit with 1. A stop must end."""

    def expire() -> None:
        print(
            f"the stop did not end within {deadline:.0f} s; exiting. Threads:",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    timer = threading.Timer(deadline, expire)
    timer.daemon = True
    timer.start()


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
            _exit_at(self._deadline)
        for hook in self._on_signal:
            hook()
        super().handle_exit(sig, frame)

    def run(self, sockets: Any = None) -> None:
        """uvicorn's run, without waiting at the end for what the stop left behind.

        asyncio.run would then wait, without a bound, for every leftover task and for the
        default executor's threads; with the broker gone, aiokafka's can hang there (seen
        in tests/test_broker_failures.py). Leftover tasks get LEFTOVER_SECONDS; the
        process exits right after (stream_app.__main__.exit_now).
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
        # uvicorn's loggers go through the process's handler (stream_app.logs): one format.
        log_config=None,
        timeout_graceful_shutdown=HTTP_GRACEFUL_SECONDS,
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
