"""Serving the API with uvicorn, with the stop order the worker needs.

At SIGTERM/SIGINT the intake gate closes at once (no record starts after the signal), then
uvicorn's graceful HTTP phase runs, then the lifespan drains the calls in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from stream_app.settings import Settings

# How long open HTTP connections (event streams, long downloads) may keep the server up.
HTTP_GRACEFUL_SECONDS = 30


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: list[Callable[[], None]]) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for hook in self._on_signal:
            hook()
        super().handle_exit(sig, frame)


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
    server = _Server(config, on_signal)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn raises the signal it caught again once it has shut down; the stop is
        # done by then.
        pass
    if not server.started:
        return 3  # the lifespan failed to start (uvicorn's own STARTUP_FAILURE code)
    return 1 if getattr(state, "fatal", None) else 0
