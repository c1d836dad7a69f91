"""Helpers for tests that run the real service: a subprocess on the shared test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from stream_app.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
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
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: last={last!r}")


@dataclass
class Namespace:
    """Topic names and app id unique to one test, so tests share a broker safely."""

    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    @property
    def topics(self) -> dict[str, str]:
        return {
            "jobs": f"{self.app_id}.jobs",
            "records": f"{self.app_id}.records",
            "results": f"{self.app_id}.results",
            "dlq": f"{self.app_id}.dlq",
        }

    def env(self) -> dict[str, str]:
        t = self.topics
        return {
            "KAFKA_APP_ID": self.app_id,
            "TOPIC_JOBS": t["jobs"],
            "TOPIC_RECORDS": t["records"],
            "TOPIC_RESULTS": t["results"],
            "TOPIC_DLQ": t["dlq"],
        }


@dataclass
class ServiceProcess:
    """`python -m stream_app` as a child, exactly as `make run` starts it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        def probe() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.logs()[-4000:]}")
            try:
                return httpx.get(f"{self.base_url}/api/v1/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(probe, timeout=timeout, interval=0.1, what="/api/v1/ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
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
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "KAFKA_", "CLAUDE_", "BATCH_", "TOPIC_", "API_KEYS"))
    }
    full = {
        **base,
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ADVERTISED_URL": f"http://127.0.0.1:{port}",
        "BATCH_JOB_STORAGE_PATH": str(workdir / "state"),
        "BATCH_SQLITE_PATH": str(workdir / "batch.db"),
        "BATCH_RETRY_BACKOFF_SECONDS": "0.05",
        "LOG_LEVEL": "INFO",
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
        )
    service = ServiceProcess(process, port, log_path)
    if wait:
        service.wait_ready()
    return service


def submit(client: httpx.Client, texts: list[str], **kwargs: Any) -> str:
    reply = client.post("/api/v1/batch", json={"records": [{"text": t} for t in texts]}, **kwargs)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["total_records"] == len(texts)
    job_id: str = body["job_id"]
    return job_id


def status(client: httpx.Client, job_id: str, **kwargs: Any) -> dict[str, Any]:
    reply = client.get(f"/api/v1/batch/{job_id}/status", **kwargs)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_completed(
    client: httpx.Client, job_id: str, timeout: float = 120.0, **kwargs: Any
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        seen.update(status(client, job_id, **kwargs))
        return seen if seen["status"] == "completed" else None

    try:
        return wait_until(probe, timeout=timeout, interval=0.1, what=f"job {job_id} to complete")
    except AssertionError:
        have = {r["index"] for r in seen.get("results", [])}
        missing = sorted(set(range(seen.get("total_records") or 0)) - have)
        counts = {k: seen.get(k) for k in ("status", "completed_count", "failed_count")}
        raise AssertionError(
            f"job {job_id} did not complete: {counts}, missing {missing}"
        ) from None
