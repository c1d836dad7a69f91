"""A job's life after it ran, on the real service, broker and simulator: deleted everywhere
(also after every worker restarted), deleted by retention, submitted once whatever the
network does (Idempotency-Key), and its failed records run again."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import Namespace, status, submit, wait_completed, wait_until
from tests.test_cluster import start_cluster

TABLES = ("job-status", "record-results", "processed-records")
# Two workers settle on their halves in seconds; a machine shared by many test runs can
# take minutes (heartbeats missed under load make the group rebalance again).
SETTLE = 240


def texts(tag: str, count: int) -> list[str]:
    return [
        f"{tag} ticket {i}: the invoice shows a charge twice and the customer wants a refund."
        for i in range(count)
    ]


def calls_for(simulator: SimulatorHandle, tag: str) -> int:
    return sum(1 for r in simulator.stats()["requests"] if r["text"].startswith(f"{tag} ticket"))


def latest_values(broker: str, topic: str, partitions: int = 4) -> dict[str, bytes | None]:
    """key -> the latest value of a compacted topic (None: a tombstone), read to its end."""

    async def read() -> dict[str, bytes | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            latest: dict[str, bytes | None] = {}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=1000)
                for messages in batches.values():
                    for message in messages:
                        latest[orjson.loads(message.key)] = message.value
            return latest
        finally:
            await consumer.stop()

    return asyncio.run(read())


def job_entries(latest: dict[str, bytes | None], job_id: str) -> dict[str, bytes | None]:
    return {k: v for k, v in latest.items() if k == job_id or k.startswith(f"{job_id}#")}


def gone(client: httpx.Client, job_id: str) -> None:
    for path in ("status", "results", "results.ndjson", "events"):
        reply = client.get(f"/api/v1/batch/{job_id}/{path}")
        assert reply.status_code == 404, (path, reply.status_code, reply.text)
        assert reply.json()["error"]["code"] == "job_not_found"
    # Each worker lists what it holds, without the jobs its batch.jobs reader knows are
    # deleted: the other workers learn of it within moments of the owner.
    wait_until(
        lambda: (
            job_id not in {j["job_id"] for j in client.get("/api/v1/batch/jobs").json()["jobs"]}
        ),
        timeout=10,
        interval=0.1,
        what="the job list without the deleted job",
    )


@pytest.mark.timeout(900)
def test_deleted_job_is_gone_from_every_worker_every_table_and_after_a_restart_of_all(
    start: StartService, broker: str, namespace: Namespace, tmp_path: Path
) -> None:
    env = {"batch_persistence_backend": "sqlite"}
    workers = start_cluster(start, tmp_path, settle_timeout=SETTLE, **env)
    one, two = (w.client() for w in workers)
    doomed = submit(one, texts("doomed", 12))
    kept = submit(one, texts("kept", 5))
    for job_id in (doomed, kept):
        # The 202 waits up to 5 s for the job to be readable; a rebalance on a loaded
        # machine (missed heartbeats) can take longer.
        wait_until(
            lambda job_id=job_id: one.get(f"/api/v1/batch/{job_id}/status").status_code == 200,
            timeout=60,
            what="the job to be readable",
        )
    wait_completed(one, doomed)
    wait_completed(one, kept)
    # Its results are in every table (and so in their changelogs) before the deletion.
    before = {t: latest_values(broker, f"{namespace.app_id}-{t}-changelog") for t in TABLES}
    assert all(job_entries(before[t], doomed) for t in TABLES)

    # Deleted through the worker that does not own it as well as through the owner.
    reply = two.delete(f"/api/v1/batch/{doomed}")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"job_id": doomed, "status": "deleted"}
    for client in (one, two):
        gone(client, doomed)
    assert two.delete(f"/api/v1/batch/{doomed}").status_code == 404

    # Every table's changelog ends each of the job's keys with a tombstone.
    def tombstoned() -> bool:
        for table in TABLES:
            latest = latest_values(broker, f"{namespace.app_id}-{table}-changelog")
            entries = job_entries(latest, doomed)
            if set(entries) != set(job_entries(before[table], doomed)):
                return False
            if any(value is not None for value in entries.values()):
                return False
        return True

    wait_until(tombstoned, timeout=30, interval=0.5, what="tombstones in every changelog")
    # ... and no SQLite mirror holds a row of it.
    for i in range(2):
        db = sqlite3.connect(tmp_path / f"w{i}" / "batch.db")
        rows = db.execute("SELECT count(*) FROM batch_results WHERE job_id=?", (doomed,))
        assert rows.fetchone() == (0,)
        rows = db.execute("SELECT count(*) FROM batch_jobs WHERE job_id=?", (doomed,))
        assert rows.fetchone() == (0,)
        db.close()

    # Every worker restarts (the deleted event is replayed after the created one).
    for worker in workers:
        assert worker.stop() == 0
    restarted = start_cluster(start, tmp_path, settle_timeout=SETTLE, **env)
    for worker in restarted:
        with worker.client() as client:
            gone(client, doomed)
            assert status(client, kept)["completed_count"] == 5
    one.close()
    two.close()


def test_a_running_job_is_cancelled_then_deleted(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # 2 requests a second: the job runs for a while.
    service = start(claude_requests_per_minute=120)
    with service.client() as client:
        job_id = submit(client, texts("running", 40))
        wait_until(
            lambda: status(client, job_id, params={"limit": "0"})["completed_count"] >= 2,
            timeout=60,
            what="the job to be running",
        )
        reply = client.delete(f"/api/v1/batch/{job_id}")
        assert reply.status_code == 200, reply.text
        gone(client, job_id)
        calls = calls_for(simulator, "running")
        assert calls < 40
        # Nothing brings it back: no further call, no late outcome recreating it.
        done = client.post("/api/v1/batch", json={"records": [{"text": "after"}]}).json()
        wait_completed(client, done["job_id"])
        gone(client, job_id)
        assert calls_for(simulator, "running") <= calls + 5  # calls in flight at the delete
    assert "job deleted" in service.logs()


def test_retention_deletes_finished_jobs_that_old(start: StartService) -> None:
    # Two seconds of retention (BATCH_RETENTION_DAYS is a number of days).
    service = start(batch_retention_days=2 / 86_400)
    with service.client() as client:
        job_id = submit(client, texts("aging", 3))
        wait_completed(client, job_id, timeout=60)
        wait_until(
            lambda: client.get(f"/api/v1/batch/{job_id}/status").status_code == 404,
            timeout=30,
            interval=0.2,
            what="retention to delete the job",
        )
        gone(client, job_id)
    assert "jobs deleted by retention" in service.logs()


@pytest.mark.timeout(900)
def test_an_idempotency_key_answers_the_first_job_on_every_worker_and_after_a_restart(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    workers = start_cluster(start, tmp_path, settle_timeout=SETTLE)
    body = {"records": [{"text": t} for t in texts("once", 6)]}
    key = {"idempotency-key": "a7c1e9b0-submit-once"}
    with workers[0].client() as one, workers[1].client() as two:
        first = one.post("/api/v1/batch", json=body, headers=key)
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        # The client timed out and retries against the other instance.
        again = two.post("/api/v1/batch", json=body, headers=key)
        assert again.status_code == 202, again.text
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        # The same key with another request is refused, on either instance.
        other = {"records": [{"text": "another text"}]}
        for client in (one, two):
            reused = client.post("/api/v1/batch", json=other, headers=key)
            assert reused.status_code == 409, reused.text
            assert reused.json()["error"]["code"] == "idempotency_key_reused"
        # Without a key (or with another), the same body is a new job.
        assert submit(one, ["a new job"]) != job_id
        wait_completed(one, job_id)
    for worker in workers:
        assert worker.stop() == 0
    restarted = start_cluster(start, tmp_path, settle_timeout=SETTLE)
    for worker in restarted:
        with worker.client() as client:
            reply = client.post("/api/v1/batch", json=body, headers=key)
            assert reply.status_code == 202, reply.text
            assert reply.json()["job_id"] == job_id
            assert status(client, job_id)["completed_count"] == 6
    # One job's worth of provider calls.
    assert calls_for(simulator, "once") == 6
    with restarted[0].client() as client:
        bad = client.post("/api/v1/batch", json=body, headers={"idempotency-key": "has space"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_idempotency_key"


def test_a_retry_of_a_big_job_reads_its_records_back_from_the_bulk_topic(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """A job bigger than BATCH_BULK_JOB_RECORDS has its records on `batch.records.bulk`;
    its outcomes' (partition, offset) point there. On `batch.records` the same positions
    hold other jobs' records: a retry must send the job's own records again, and never
    another job's."""
    service = start(batch_record_retry_count=0, batch_bulk_job_records=4)
    with service.client() as client:
        # Small jobs first: their records fill the low offsets of `batch.records`.
        others = [submit(client, texts(f"other{n}", 4)) for n in range(3)]
        for other in others:
            wait_completed(client, other)
        records = texts("big", 10)
        flaky = {2, 5, 7}
        for index in flaky:
            records[index] += " [[sim:bad-json-once]]"
        job_id = submit(client, records)
        before = wait_completed(client, job_id)
        assert (before["completed_count"], before["failed_count"]) == (7, 3)
        reply = client.post(f"/api/v1/batch/{job_id}/retry", json={"failed": True})
        assert reply.status_code == 202, reply.text
        after = wait_completed(client, job_id)
        assert (after["completed_count"], after["failed_count"]) == (10, 0)
        assert calls_for(simulator, "big") == 13
        # The other jobs were not touched: one call per record, no retry round.
        for n, other in enumerate(others):
            assert calls_for(simulator, f"other{n}") == 4
            assert status(client, other, params={"limit": "0"})["retries"] == 0


def test_a_retry_of_three_failed_records_makes_three_calls_and_the_status_adds_up(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(batch_record_retry_count=0)
    assert "the API is open to anyone" in service.logs()
    records = texts("again", 10)
    flaky = {2, 5, 7}
    for index in flaky:  # invalid output the first time (billed), valid the second
        records[index] += " [[sim:bad-json-once]]"
    with service.client() as client:
        job_id = submit(client, records)
        before = wait_completed(client, job_id)
        assert (before["completed_count"], before["failed_count"]) == (7, 3)
        assert calls_for(simulator, "again") == 10
        reply = client.post(f"/api/v1/batch/{job_id}/retry", json={"failed": True})
        assert reply.status_code == 202, reply.text
        assert reply.json()["retry"] == 1 and reply.json()["records"] == 3
        after = wait_completed(client, job_id)
        assert (after["completed_count"], after["failed_count"]) == (10, 0)
        assert calls_for(simulator, "again") == 13
        results = {r["index"]: r for r in after["results"]}
        assert sorted(results) == list(range(10))
        assert all(results[i]["success"] for i in range(10))
        assert [i for i, r in results.items() if r["attempts"] == 2] == sorted(flaky)
        # Both rounds' tokens are counted, once: the job's total is the results' sum, and
        # each retried record keeps its first round's billed tokens plus its second's.
        assert after["total_tokens_used"] == sum(r["tokens_used"] for r in results.values())
        first = {r["index"]: r["tokens_used"] for r in before["results"]}
        for index in flaky:
            assert results[index]["tokens_used"] > first[index] > 0
        for index in set(range(10)) - flaky:
            assert results[index]["tokens_used"] == first[index]
        # Nothing left to retry: no round, no call.
        again = client.post(f"/api/v1/batch/{job_id}/retry")
        assert again.status_code == 202 and again.json()["records"] == 0
        assert calls_for(simulator, "again") == 13
