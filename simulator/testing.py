"""Run the simulator on a background thread for tests (and any other in-process use)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from simulator.app import create_app
from simulator.config import SimulatorConfig

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


class SimulatorHandle:
    """Where a running simulator listens, plus typed access to its /_sim/ endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=10.0)

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/_sim/stats")

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Partially update the config; returns the full resulting config."""
        return self._request("POST", "/_sim/config", json=fields)

    def reset(self) -> None:
        self._request("POST", "/_sim/reset")

    def max_requests_in_window(self, seconds: float, statuses: Iterable[int] = (200,)) -> int:
        """Most requests with these statuses that arrived within any ``seconds``-long window."""
        wanted = set(statuses)
        arrivals = [r["t"] for r in self.stats()["requests"] if r["status"] in wanted]
        return max_in_window(arrivals, seconds)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        response = self._http.request(method, path, json=json)
        response.raise_for_status()
        payload: dict[str, Any] = response.json()
        return payload


def max_in_window(times: Iterable[float], seconds: float) -> int:
    """Largest number of ``times`` inside any half-open window [t, t + seconds)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


class _ThreadServer(uvicorn.Server):
    """uvicorn server that signals another thread once startup has finished (or failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_finished = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            # Also set on failure (uvicorn raises SystemExit) so the waiter never hangs.
            self.startup_finished.set()


@contextmanager
def run_simulator(
    config: SimulatorConfig | None = None, port: int = 0
) -> Iterator[SimulatorHandle]:
    """Serve a fresh simulator on 127.0.0.1 (a free port by default) for the ``with`` body.

    The server has its own thread and event loop, so it works for sync tests, async tests
    and for subprocesses pointed at ``handle.base_url``.
    """
    server = _ThreadServer(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name="claude-simulator", daemon=True)
    thread.start()
    try:
        if not server.startup_finished.wait(STARTUP_TIMEOUT_S) or not server.started:
            raise RuntimeError(f"simulator failed to start on 127.0.0.1:{port}")
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        handle = SimulatorHandle(f"http://127.0.0.1:{bound_port}")
        try:
            yield handle
        finally:
            handle.close()
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
