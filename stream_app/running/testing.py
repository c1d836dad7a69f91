"""Running `python -m stream_app` as a child process, as `make run` does: for the test
suite and the benchmarks, which both drive the real service from outside."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from stream_app.running.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
# The child gets its configuration from the caller only, never from this shell.
SERVICE_ENV_PREFIXES = ("ANTHROPIC_", "KAFKA_", "CLAUDE_", "BATCH_", "TOPIC_", "API_KEYS")
T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or probe}: last={last!r}")


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, **{"timeout": 10.0, **kwargs})

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ensure_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"service on port {self.port} exited with {self.process.returncode}:\n"
                f"{self.logs()[-4000:]}"
            )

    def is_ready(self) -> bool:
        self.ensure_alive()
        try:
            return httpx.get(f"{self.base_url}/api/v1/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        # Generous: `make run` starts a JVM broker, the simulator and the worker, and on a
        # 2-core machine under other load that took over 90 s (seen in a parallel run).
        wait_until(self.is_ready, timeout=timeout, interval=0.1, what="/api/v1/ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0, *, group: bool = False) -> int:
        """Send `sig` and wait for the exit code. `group=True` signals the whole process
        group, as a Ctrl-C in a terminal does (the service runs in a session of its own)."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"service ignored signal {sig}:\n{self.logs()[-4000:]}"
                ) from None
        return self.process.returncode


def start_service(env: dict[str, str], workdir: Path, *, wait: bool = True) -> ServiceProcess:
    """Start the service on a free port with its state in `workdir` (also its cwd, so a
    developer's `.env` is not picked up); `env` holds its configuration."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV_PREFIXES)}
    full = {
        **inherited,
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        # Status reads are forwarded to a job's owner at this address.
        "ADVERTISED_URL": f"http://127.0.0.1:{port}",
        "BATCH_JOB_STORAGE_PATH": str(workdir / "state"),
        "BATCH_SQLITE_PATH": str(workdir / "batch.db"),
        "LOG_LEVEL": "INFO",
        # Tests read the log as text; the JSON format has a test of its own.
        "LOG_FORMAT": "text",
        **env,
    }
    log_path = workdir / f"service-{port}.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_app"],
            cwd=workdir,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, like a command started from a terminal.
            start_new_session=True,
        )
    service = ServiceProcess(process, port, log_path)
    if wait:
        try:
            service.wait_ready()
        except BaseException:
            # Not ready in time (or interrupted): leave no worker, broker or simulator of
            # it behind, since the caller never gets a handle to stop them.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    return service
