"""Cancelling a running job, on the real service, broker and simulator."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from simulator.testing import SimulatorHandle
from stream_app.kafka.topics import ensure_topics
from tests.conftest import StartService
from tests.sse import collect
from tests.support import Namespace, ServiceProcess, status, submit, wait_completed, wait_until

TOTAL = 80


def texts(tag: str, count: int = TOTAL) -> list[str]:
    return [
        f"{tag} note {i}: the customer reports that the mobile app logs them out after every "
        f"update and asks for a fix before the weekend."
        for i in range(count)
    ]


def calls_for(simulator: SimulatorHandle, tag: str) -> list[dict[str, Any]]:
    return [r for r in simulator.stats()["requests"] if r["text"].startswith(f"{tag} note")]


def wait_settled(client: httpx.Client, job_id: str, total: int) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        body = status(client, job_id)
        done = body["completed_count"] + body["failed_count"] + body["skipped_count"]
        return body if done == total else None

    return wait_until(settled, timeout=60, interval=0.1, what="every record to have an outcome")


def cancel_while_running(
    client: httpx.Client, job_id: str, started: int
) -> tuple[dict[str, Any], float, float]:
    wait_until(
        lambda: status(client, job_id, params={"limit": "0"})["completed_count"] >= started,
        timeout=60,
        interval=0.02,
        what=f"{started} records done",
    )
    sent = time.time()
    reply = client.post(f"/api/v1/batch/{job_id}/cancel")
    answered = time.time()
    assert reply.status_code == 200, reply.text
    return reply.json(), sent, answered


def check_cancelled_job(
    body: dict[str, Any], calls: list[dict[str, Any]], total: int, answered: float
) -> None:
    # Every index has exactly one outcome; each call made produced one outcome, and no
    # skipped record was sent to the provider.
    assert body["status"] == "cancelled"
    assert sorted(r["index"] for r in body["results"]) == list(range(total))
    skipped = [r for r in body["results"] if r.get("skipped")]
    assert len(skipped) == body["skipped_count"] > 0
    assert all(r["success"] is False and r["tokens_used"] == 0 for r in skipped)
    assert all(r["attempts"] == 0 for r in skipped)
    assert body["completed_count"] + body["failed_count"] == len(calls)
    assert body["completed_count"] == len(calls) and body["failed_count"] == 0
    # No call for the job started after the cancel answered.
    late = [c["t"] - answered for c in calls if c["t"] > answered]
    assert late == [], f"calls started after the cancel answered (s after): {late}"


def test_cancel_skips_records_not_started_and_keeps_calls_in_flight(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_ms=300)
    # Logs go to a file: JSON lines (LOG_FORMAT=auto), checked below.
    service = start(batch_max_concurrent_llm_calls=4, log_format="auto")
    with service.client() as client:
        job_id = submit(client, texts("solo"))
        summary, sent, answered = cancel_while_running(client, job_id, started=8)
        assert summary["status"] == "cancelled" and summary["job_id"] == job_id
        body = wait_settled(client, job_id, TOTAL)
        calls = calls_for(simulator, "solo")
        check_cancelled_job(body, calls, TOTAL, answered)
        last = max(c["t"] for c in calls)
        print(
            f"1 worker: last call started {1000 * (last - sent):.1f} ms after the cancel was "
            f"sent; the cancel answered after {1000 * (answered - sent):.1f} ms"
        )
        # Calls in flight at the cancel finished, and their results are kept.
        assert body["completed_count"] >= 8
        assert body["input_tokens"] == simulator.stats()["total_input_tokens_billed"]

        # Idempotent: the same answer, no second event needed.
        again = client.post(f"/api/v1/batch/{job_id}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert again.json()["skipped_count"] == body["skipped_count"]

        # This worker produced every outcome: its counters say the same.
        metrics = client.get("/metrics").text
        assert (
            f'insight_records_total{{outcome="skipped"}} {float(body["skipped_count"])}' in metrics
        )
        succeeded = float(body["completed_count"])
        assert f'insight_records_total{{outcome="succeeded"}} {succeeded}' in metrics
        assert f'insight_provider_calls_total{{status="200"}} {float(len(calls))}' in metrics
    service.stop()

    # Structured log lines: JSON objects with the job's id, no secret, no record text.
    lines = [json.loads(line) for line in service.logs().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    heard = [line for line in lines if line["msg"].startswith("job cancelled")]
    assert [line["job_id"] for line in heard] == [job_id]
    applied = [line for line in lines if line["msg"] == "job status cancelled"]
    assert applied[0]["job_id"] == job_id and isinstance(applied[0]["partition"], int)
    assert "sk-test-secret-do-not-log" not in service.logs()
    assert "solo note" not in service.logs()


def test_cancel_finished_job_is_409_and_unknown_is_404(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start()
    with service.client() as client:
        job_id = submit(client, texts("done", 3))
        wait_until(
            lambda: status(client, job_id)["status"] == "completed", timeout=30, what="completed"
        )
        reply = client.post(f"/api/v1/batch/{job_id}/cancel")
        assert reply.status_code == 409
        assert reply.json()["error"]["code"] == "job_finished"
        missing = client.post("/api/v1/batch/nope/cancel")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "job_not_found"
    assert len(calls_for(simulator, "done")) == 3


def start_pair(start: StartService, tmp_path: Path, **env: object) -> list[ServiceProcess]:
    workers = [start(workdir=tmp_path / f"w{i}", **env) for i in range(2)]

    def split() -> bool:
        owned = [
            set(httpx.get(f"{w.base_url}/api/v1/ready", timeout=2).json()["partitions"])
            for w in workers
        ]
        return sorted(owned[0] | owned[1]) == [0, 1, 2, 3] and not owned[0] & owned[1]

    wait_until(split, timeout=60, interval=0.2, what="two workers with half the partitions each")
    return workers


def test_cancel_reaches_every_worker(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    simulator.configure(latency_ms=300)
    workers = start_pair(start, tmp_path, batch_max_concurrent_llm_calls=3)
    with workers[0].client() as first, workers[1].client() as second:
        job_id = submit(first, texts("pair"))
        # Asked of the worker that does not own the job (or does: either way it must work).
        summary, sent, answered = cancel_while_running(second, job_id, started=6)
        assert summary["status"] == "cancelled"
        body = wait_settled(first, job_id, TOTAL)
        calls = calls_for(simulator, "pair")
        check_cancelled_job(body, calls, TOTAL, answered)
        last = max(c["t"] for c in calls)
        print(
            f"2 workers: last call started {1000 * (last - sent):.1f} ms after the cancel was "
            f"sent; the cancel answered after {1000 * (answered - sent):.1f} ms"
        )
        # The events stream answers from either worker (one owns the job, the other
        # forwards), and ends once every record has its outcome.
        for client in (first, second):
            events, ended = collect(client, job_id)
            assert ended and events[-1].json()["status"] == "cancelled"
            indices = sorted(e.json()["index"] for e in events if e.event == "result")
            assert indices == list(range(TOTAL))
    # Every worker read the cancel from batch.jobs, and both had records of the job: the
    # skipped outcomes came from both.
    for worker in workers:
        assert "job cancelled: its records that have not started are skipped" in worker.logs()
    skipped_by = [
        float(line.split()[-1])
        for worker in workers
        for line in httpx.get(f"{worker.base_url}/metrics").text.splitlines()
        if line.startswith('insight_records_total{outcome="skipped"}')
    ]
    assert len(skipped_by) == 2 and all(count > 0 for count in skipped_by)
    assert sum(skipped_by) == body["skipped_count"]


async def _publish_upstream(broker: str, topics: dict[str, str]) -> None:
    """What an upstream producer does, before any worker runs: a job, its records, then
    its cancel; and a second job that is not cancelled."""
    await ensure_topics(broker, {topic: 4 for topic in topics.values()})
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        for job_id, count in (("upstream-cancelled", 20), ("upstream-kept", 5)):
            created = {"type": "created", "job_id": job_id, "total_records": count}
            await producer.send_and_wait(
                topics["jobs"], json.dumps(created).encode(), job_id.encode()
            )
            for index in range(count):
                record = {
                    "job_id": job_id,
                    "index": index,
                    "record": {"text": f"{job_id} note {index}: late parcel."},
                }
                key = f"{job_id}#{index}".encode()
                await producer.send_and_wait(topics["records"], json.dumps(record).encode(), key)
        cancelled = {"type": "cancelled", "job_id": "upstream-cancelled"}
        await producer.send_and_wait(
            topics["jobs"], json.dumps(cancelled).encode(), b"upstream-cancelled"
        )
    finally:
        await producer.stop()


def test_a_worker_started_after_the_cancel_skips_every_record(
    start: StartService, simulator: SimulatorHandle, namespace: Namespace, broker: str
) -> None:
    """A worker that starts (or restarts, or takes over partitions after a rebalance) reads
    every earlier cancel before it judges a record."""
    asyncio.run(_publish_upstream(broker, namespace.topics))
    service = start()
    with service.client() as client:
        kept = wait_completed(client, "upstream-kept")
        body = wait_settled(client, "upstream-cancelled", 20)
    assert kept["completed_count"] == 5
    assert body["status"] == "cancelled" and body["skipped_count"] == 20
    assert all(r.get("skipped") for r in body["results"])
    texts = [r["text"] for r in simulator.stats()["requests"]]
    assert len(texts) == 5 and all(t.startswith("upstream-kept") for t in texts)
