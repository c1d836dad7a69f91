"""The batch lane end to end: the service on Apache Kafka, the provider's Message Batches API
served by the simulator (its processing time short), the real SDK between them."""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from typing import Any

import httpx

from simulator.testing import SimulatorHandle
from stream_app.provider.pricing import price_for
from tests.conftest import StartService
from tests.support import status, wait_completed, wait_until

MODEL = "claude-sonnet-4-5"
LANE = {
    "claude_model": MODEL,
    "batch_lane_window_seconds": "2",
    "batch_lane_poll_seconds": "0.2",
}


def texts(count: int, tag: str = "") -> list[str]:
    return [
        f"Ticket {i}{tag}: the parcel came late and the box was damaged. Refund please."
        for i in range(count)
    ]


def submit_job(client: httpx.Client, lines: list[str], **options: Any) -> str:
    body = {"records": [{"text": t} for t in lines], **options}
    reply = client.post("/api/v1/batch", json=body)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def all_results(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    reply = client.get(f"/api/v1/batch/{job_id}/results.ndjson")
    assert reply.status_code == 200
    import orjson

    return [orjson.loads(line) for line in reply.content.splitlines() if line.strip()]


def live_cost_of(job: dict[str, Any]) -> Decimal:
    tokens = (
        job["input_tokens"],
        job["output_tokens"],
        job["cache_creation_input_tokens"],
        job["cache_read_input_tokens"],
    )
    return price_for(MODEL).cost(*tokens)


def test_a_batch_lane_job_ends_whole_at_half_the_live_price(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=1.5, batch_not_found_seconds=0.3)
    service = start(batch_lane_max_requests=100, **LANE)
    with service.client() as client:
        began = time.monotonic()
        job_id = submit_job(client, texts(300), lane="batch")
        try:
            job = wait_completed(client, job_id, timeout=120)
        except AssertionError:
            open("/tmp/batches_lane_log.txt", "w").write(service.logs())
            raise
        print(f"batch-lane job of 300: {time.monotonic() - began:.1f} s")
        results = all_results(client, job_id)
    assert job["lane"] == "batch" and job["lane_reason"] == "asked for the batch lane"
    assert sorted(r["index"] for r in results) == list(range(300))
    assert job["completed_count"] == 300 and job["failed_count"] == 0
    stats = simulator.stats()
    # No live call at all; provider batches of at most 100, every item paid once.
    assert stats["requests"] == []
    sizes = [b["requests"] for b in stats["batches"]]
    assert max(sizes) <= 100 and sum(sizes) == 300, sizes
    assert stats["batch_items_billed"] == 300
    assert job["input_tokens"] == stats["batch_input_tokens_billed"]
    assert job["output_tokens"] == stats["batch_output_tokens_billed"]
    live = live_cost_of(job)
    assert Decimal(job["estimated_cost_usd"]) == live / 2
    assert Decimal(job["saving_usd"]) == live / 2
    batches = job["provider_batches"]
    assert len(batches) == len(sizes)
    assert all(b["processing_status"] == "ended" for b in batches)
    assert sum(b["request_counts"]["succeeded"] for b in batches) == 300
