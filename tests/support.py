"""Helpers for tests that run the real service: a subprocess on the shared test broker."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka.partitioner import murmur2

from stream_app.running.testing import ServiceProcess, start_service, wait_until

__all__ = [
    "Namespace",
    "ServiceProcess",
    "partition_of",
    "pace_bound",
    "start_service",
    "status",
    "submit",
    "submit_on_every_partition",
    "wait_until",
]


@dataclass
class Namespace:
    """Topic names and app id unique to one test, so tests share a broker safely."""

    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    @property
    def topics(self) -> dict[str, str]:
        return {
            "jobs": f"{self.app_id}.jobs",
            "records": f"{self.app_id}.records",
            "records_bulk": f"{self.app_id}.records.bulk",
            "results": f"{self.app_id}.results",
            "dlq": f"{self.app_id}.dlq",
            "spend": f"{self.app_id}.spend",
        }

    def env(self) -> dict[str, str]:
        t = self.topics
        return {
            "KAFKA_APP_ID": self.app_id,
            "TOPIC_JOBS": t["jobs"],
            "TOPIC_RECORDS": t["records"],
            "TOPIC_RECORDS_BULK": t["records_bulk"],
            "TOPIC_RESULTS": t["results"],
            "TOPIC_DLQ": t["dlq"],
            "TOPIC_SPEND": t["spend"],
        }


# The longest a request may trail its grant on the way to the provider (event loop, SDK,
# HTTP) on a loaded 2-core machine: 1 s was seen with a load average of 10.
CLIENT_DELAY_SECONDS = 1.0


def pace_bound(rpm: float, window: float) -> int:
    """Most requests the provider may see in any `window` seconds from a cluster paced at
    `rpm`: the timetable grants at most ceil(rpm * w / 60) + 1 in any w seconds
    (stream_app/provider/budget.py), and a request reaches the provider up to
    CLIENT_DELAY_SECONDS after its grant, so arrivals in `window` come from grants in
    `window` + that delay."""
    return math.ceil(rpm * (window + CLIENT_DELAY_SECONDS) / 60) + 1


def submit(client: httpx.Client, texts: list[str], **kwargs: Any) -> str:
    reply = client.post("/api/v1/batch", json={"records": [{"text": t} for t in texts]}, **kwargs)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["total_records"] == len(texts)
    job_id: str = body["job_id"]
    return job_id


def partition_of(key: str, partitions: int) -> int:
    """The partition the service's producer (Kafka's default partitioner) gives `key`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def submit_on_every_partition(client: httpx.Client, partitions: int, **kwargs: Any) -> list[str]:
    """Jobs of four records each, submitted until their records together sit on every
    `batch.records` partition (a record's key is `<job_id>#<index>`)."""
    jobs: list[str] = []
    covered: set[int] = set()
    while len(covered) < partitions:
        job_id = submit(client, [f"Sentinel {i}. Nothing to report." for i in range(4)], **kwargs)
        jobs.append(job_id)
        covered |= {partition_of(f"{job_id}#{i}", partitions) for i in range(4)}
    return jobs


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
        seen.clear()  # the last status as read, not a merge of every poll
        seen.update(status(client, job_id, **kwargs))
        return seen if seen["status"] == "completed" else None

    try:
        return wait_until(probe, timeout=timeout, interval=0.1, what=f"job {job_id} to complete")
    except TimeoutError:
        have = {r["index"] for r in seen.get("results", [])}
        missing = sorted(set(range(seen.get("total_records") or 0)) - have)
        counts = {k: seen.get(k) for k in ("status", "completed_count", "failed_count")}
        raise AssertionError(
            f"job {job_id} did not complete: {counts}, missing {missing}"
        ) from None
