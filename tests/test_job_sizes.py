"""Jobs of any size (issue 9): a submit is all or nothing, a stream of records is taken in
bounded memory, and a large job's results page through every index once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import BatchRecord, JobCreated, RecordEvent
from simulator.testing import SimulatorHandle
from stream_app.core.exceptions import JobNeverAnnounced
from stream_app.jobs.job_rules import JobRules
from tests.conftest import StartService
from tests.kafka.test_kafka_contract import consume, produce
from tests.support import Namespace, ServiceProcess, submit, wait_completed, wait_until

PARTITIONS = 4  # tests.conftest's KAFKA_PARTITIONS


async def end_offsets(broker: str, topic: str) -> int:
    """How many messages `topic` holds (sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return sum(ends.values())


def job_ids(service: ServiceProcess) -> list[str]:
    with service.client() as client:
        return [job["job_id"] for job in client.get("/api/v1/batch/jobs").json()["jobs"]]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_a_client_that_disconnects_halfway_leaves_no_job(
    start: StartService, broker: str, namespace: Namespace, simulator: SimulatorHandle
) -> None:
    service = start()
    lines = b"".join(
        orjson.dumps({"text": f"Ticket {i}. The export crashes."}) + b"\n" for i in range(2000)
    )
    half = lines[: len(lines) // 2]
    # A raw socket: announce the whole body, send half of it, hang up.
    with socket.create_connection(("127.0.0.1", service.port)) as raw:
        raw.sendall(
            b"POST /api/v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n"
            + f"content-length: {len(lines)}\r\n\r\n".encode()
            + half
        )
    wait_until(
        lambda: "client disconnected before the end of its request" in service.logs(),
        timeout=30,
        what="the service to see the disconnect",
    )
    # A complete job afterwards: it is the only one, and the only records on Kafka.
    with service.client() as client:
        job_id = submit(client, ["Fine. Works.", "Late, but kind support."])
        await asyncio.to_thread(wait_completed, client, job_id)
    assert job_ids(service) == [job_id]
    assert await end_offsets(broker, namespace.topics["records"]) == 2
    assert len(simulator.stats()["requests"]) == 2


async def test_records_of_a_submit_that_failed_halfway_are_dead_lettered_not_run(
    start: StartService, broker: str, namespace: Namespace, simulator: SimulatorHandle
) -> None:
    """What a submit that timed out (503 broker_unavailable) after part of its records
    leaves on Kafka: records with `created_follows` and no `created` event. They are not
    run (no call, no outcome, no job), and go to the dead-letter topic."""
    # A submit gives up after 1 s; its records wait 1 + 1 s for the announcement.
    service = start(kafka_publish_timeout_seconds=1, batch_job_announce_wait_seconds=1)
    topics = namespace.topics
    orphan = f"half-{uuid.uuid4().hex[:8]}"
    records = [
        (
            topics["records"],
            f"{orphan}#{i}".encode(),
            orjson.dumps(
                {
                    "job_id": orphan,
                    "index": i,
                    "record": {"text": f"Note {i}. All fine."},
                    "created_follows": True,
                }
            ),
        )
        for i in range(6)
    ]
    await produce(broker, list(records))
    letters = [orjson.loads(m.value) for m in await consume(broker, topics["dlq"], 6)]
    assert len(letters) == 6
    assert all("was never announced" in letter["reason"] for letter in letters)
    assert sorted(orjson.loads(letter["value"])["index"] for letter in letters) == list(range(6))
    # A submit through the API: records first, then its announcement; it runs.
    with service.client() as client:
        job_id = submit(client, ["Fine. Works.", "Late, but kind support."])
        body = await asyncio.to_thread(wait_completed, client, job_id)
    assert body["completed_count"] == 2
    assert job_ids(service) == [job_id]
    assert len(simulator.stats()["requests"]) == 2  # none for the half job
    assert await end_offsets(broker, topics["results"]) == 2
    sent = [orjson.loads(m.value) for m in await consume(broker, topics["records"], 8)]
    assert [m["created_follows"] for m in sent if m["job_id"] == job_id] == [True, True]


async def test_a_record_waits_for_its_job_announced_after_it() -> None:
    """The worker's rule, without Kafka: a `created_follows` record runs once its job is
    announced (however late, within the wait), and is refused when it never is; the job's
    other records then learn it at once."""
    rules = JobRules(
        None,  # type: ignore[arg-type]
        lambda model: None,  # type: ignore[arg-type, return-value]
        announce_wait_seconds=0.05,
        created_follows_wait_seconds=0.5,
    )

    def record(job: str, index: int) -> RecordEvent:
        return RecordEvent(
            job_id=job, index=index, record=BatchRecord(text="hi"), created_follows=True
        )

    # Announced after 0.2 s: longer than an upstream record would wait (0.05 s).
    waiting = asyncio.create_task(rules._terms_of("late", created_follows=True))
    await asyncio.sleep(0.2)
    rules.learn(JobCreated(job_id="late", total_records=1))
    assert not (await waiting).never_announced
    # Never announced: refused, the second record of the job without a second wait.
    first = asyncio.create_task(rules.admit(record("gone", 0)))
    second = asyncio.create_task(rules.admit(record("gone", 1)))
    began = time.monotonic()
    for task in (first, second):
        try:
            await task
        except JobNeverAnnounced as exc:
            assert "gone" in str(exc)
        else:
            raise AssertionError("a record of a job never announced was admitted")
    assert time.monotonic() - began < 1.0
    began = time.monotonic()
    try:
        await rules.admit(record("gone", 2))
    except JobNeverAnnounced:
        pass
    assert time.monotonic() - began < 0.1


def test_a_large_job_pages_through_every_index_once(start: StartService) -> None:
    service = start(batch_max_concurrent_llm_calls=16)
    total = 700
    with service.client() as client:
        job_id = submit(client, [f"Review {i}. Late delivery, kind support." for i in range(total)])
        wait_completed(client, job_id, timeout=180, params={"limit": 0})
        seen: list[int] = []
        offset: int | None = 0
        pages = 0
        while offset is not None:
            page = client.get(
                f"/api/v1/batch/{job_id}/results", params={"offset": offset, "limit": 128}
            ).json()
            seen += [r["index"] for r in page["results"]]
            assert all(r["success"] for r in page["results"])
            offset = page["next_offset"]
            pages += 1
        assert pages == 6  # 700 / 128, rounded up
        assert seen == list(range(total))  # every index once, in order
        # The status lists up to its limit, with the totals of the whole job.
        status = client.get(f"/api/v1/batch/{job_id}/status", params={"limit": 50}).json()
        assert [r["index"] for r in status["results"]] == list(range(50))
        assert status["completed_count"] == total


def _ndjson_body(records: int, text_chars: int) -> Iterator[bytes]:
    filler = ("lorem ipsum dolor sit amet " * (text_chars // 27 + 1))[:text_chars]
    chunk: list[bytes] = []
    for i in range(records):
        chunk.append(orjson.dumps({"text": f"{i} {filler}"}) + b"\n")
        if len(chunk) == 500:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


def test_an_ndjson_submit_of_100000_records_is_taken_in_bounded_memory(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    # One call a minute: the worker holds the job's records, it does not process them.
    service = start(claude_requests_per_minute=1, kafka_publish_timeout_seconds=120)
    pid = service.process.pid
    records, text_chars = 100_000, 1000
    baseline = rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        reply = httpx.post(
            f"{service.base_url}/api/v1/batch",
            content=_ndjson_body(records, text_chars),
            headers={"content-type": "application/x-ndjson"},
            timeout=180.0,
        )
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - began
    assert reply.status_code == 202, reply.text
    assert reply.json()["total_records"] == records
    growth_mib = (peak[0] - baseline) / 1024
    body_mib = records * (text_chars + 20) / 2**20
    print(f"POST {seconds:.1f} s, body {body_mib:.0f} MiB, RSS growth {growth_mib:.1f} MiB")
    # The body (~97 MiB) never sits whole in the service's memory.
    assert growth_mib < 50, f"RSS grew {growth_mib:.1f} MiB during a {body_mib:.0f} MiB submit"
    # Every record is on Kafka: a job this big goes to the bulk record topic (size lanes).
    published = sum(
        asyncio.run(end_offsets(broker, namespace.topics[topic]))
        for topic in ("records", "records_bulk")
    )
    assert published == records
