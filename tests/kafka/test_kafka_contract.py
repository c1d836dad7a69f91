"""Kafka as a public interface: upstream producers and downstream consumers use aiokafka."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import StartService
from tests.support import Namespace, partition_of, status, wait_completed


async def produce(broker: str, messages: list[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def consume(broker: str, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    """Read `count` messages from the start of `topic`, as a downstream consumer would."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=f"downstream-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    return messages


async def test_upstream_producer_and_downstream_consumer(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    # With API_KEYS set, an upstream job is visible to the client its `owner` names.
    service = start(api_keys="alice:alice-secret,bob:bob-secret")
    alice = {"authorization": "Bearer alice-secret"}
    topics = namespace.topics
    job_id = f"upstream-{uuid.uuid4().hex[:8]}"
    texts = [f"Review {i}. The delivery was late but support was kind." for i in range(12)]
    created = {"type": "created", "job_id": job_id, "total_records": len(texts), "owner": "alice"}
    messages: list[tuple[str, bytes | None, bytes | None]] = [
        (topics["jobs"], job_id.encode(), orjson.dumps(created))
    ]
    for i, text in enumerate(texts):
        record = {"job_id": job_id, "index": i, "record": {"text": text, "id": f"r{i}"}}
        messages.append((topics["records"], f"{job_id}#{i}".encode(), orjson.dumps(record)))
    await produce(broker, messages)

    results = await consume(broker, topics["results"], len(texts))
    assert len(results) == len(texts)
    payloads = [orjson.loads(m.value) for m in results]
    assert all(m.key == job_id.encode() for m in results)
    assert sorted(p["index"] for p in payloads) == list(range(len(texts)))
    for payload in payloads:
        # Plain JSON in the documented shape, no Faust metadata.
        assert "__faust" not in payload
        assert payload["job_id"] == job_id and payload["success"] is True
        assert payload["record_id"] == f"r{payload['index']}"
        assert payload["input_tokens"] > 0 and payload["output_tokens"] > 0
        assert set(payload["response"]) >= {"summary", "insights", "sentiment", "metadata"}

    with service.client() as client:
        body = await asyncio.to_thread(wait_completed, client, job_id, headers=alice)
        bob = {"authorization": "Bearer bob-secret"}
        reply = client.get(f"/api/v1/batch/{job_id}/status", headers=bob)
        assert (reply.status_code, reply.json()["error"]["code"]) == (404, "job_not_found")
    assert body["completed_count"] == len(texts)
    assert body["total_tokens_used"] == sum(
        p["input_tokens"] + p["output_tokens"] for p in payloads
    )


async def test_poison_messages_go_to_the_dead_letter_topic(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    service = start()
    topics = namespace.topics
    job_id = f"poison-{uuid.uuid4().hex[:8]}"
    created = {"type": "created", "job_id": job_id, "total_records": 3}
    good = {"job_id": job_id, "index": 0, "record": {"text": "Fine. Works."}}
    blank = {"job_id": job_id, "index": 1, "record": {"text": ""}}
    wrong = {"job_id": job_id, "index": 2, "record": "not an object"}
    await produce(
        broker,
        [
            (topics["jobs"], job_id.encode(), orjson.dumps(created)),
            (topics["jobs"], b"junk", b"\xff\xfe not json"),
            (topics["records"], None, b"{{{"),
            (topics["records"], b"tombstone", None),
            (topics["records"], None, orjson.dumps(good)),
            (topics["records"], None, orjson.dumps(blank)),
            (topics["records"], None, orjson.dumps(wrong)),
            (topics["results"], job_id.encode(), b'{"job_id": 5}'),
        ],
    )
    letters = [orjson.loads(m.value) for m in await consume(broker, topics["dlq"], 6)]
    assert len(letters) == 6
    reasons = sorted(letter["reason"].split(":")[0] for letter in letters)
    assert reasons == [
        "invalid job event",
        "invalid record event",
        "invalid record event",
        "invalid record event",
        "invalid record event",
        "invalid result event",
    ]
    assert {letter["source_topic"] for letter in letters} == {
        topics["jobs"],
        topics["records"],
        topics["results"],
    }
    # Records that named their job still got an outcome, so the job completes.
    with service.client() as client:
        body = await asyncio.to_thread(wait_completed, client, job_id)
        assert (body["completed_count"], body["failed_count"]) == (1, 2)
        failed = {r["index"]: r["error"] for r in body["results"] if not r["success"]}
        assert set(failed) == {1, 2} and all("invalid record event" in e for e in failed.values())

        # And the service keeps working: the very next request is accepted.
        reply = client.post("/api/v1/batch", json={"records": [{"text": "After. Fine."}]})
        assert reply.status_code == 202, reply.text
        new_job = reply.json()["job_id"]
        assert (await asyncio.to_thread(wait_completed, client, new_job))["completed_count"] == 1
        assert status(client, job_id)["failed_count"] == 2


async def test_records_published_by_the_api_carry_owner_and_priority(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    # The scheduler of whichever worker reads a record learns its tenant and priority
    # from the record itself.
    service = start(api_keys="alice:alice-secret")
    auth = {"authorization": "Bearer alice-secret"}
    with service.client(headers=auth) as client:
        plain = client.post("/api/v1/batch", json={"records": [{"text": "Late."}] * 2})
        high = client.post(
            "/api/v1/batch", json={"records": [{"text": "Down."}] * 2, "priority": "high"}
        )
        lines = '{"job": {"lane": "live"}}\n{"text": "Slow."}\n{"text": "Meh."}\n'
        ndjson = client.post(
            "/api/v1/batch",
            content=lines,
            params={"priority": "low"},  # the job line and the query both apply
            headers={"content-type": "application/x-ndjson"},
        )
        conflict = client.post(
            "/api/v1/batch",
            content='{"job": {"priority": "low"}}\n{"text": "x"}\n',
            params={"priority": "high"},  # given twice, differently: which one was meant?
            headers={"content-type": "application/x-ndjson"},
        )
        assert conflict.status_code == 422, conflict.text
        assert "differs from the body's priority" in conflict.json()["error"]["message"]
        csv = client.post(
            "/api/v1/batch",
            content="text\nFine.\nGood.\n",
            params={"priority": "high"},
            headers={"content-type": "text/csv"},
        )
        refused = client.post(
            "/api/v1/batch",
            content='{"text": "x"}\n',
            params={"priority": "urgent"},
            headers={"content-type": "application/x-ndjson"},
        )
        assert refused.status_code == 422 and "priority" in refused.json()["error"]["message"]
        replies = [plain, high, ndjson, csv]
        assert [r.status_code for r in replies] == [202] * 4, [r.text for r in replies]
        for reply in replies:
            wait_completed(client, reply.json()["job_id"])
    priorities = ["normal", "high", "low", "high"]
    expected = dict(zip([r.json()["job_id"] for r in replies], priorities, strict=True))
    records = [orjson.loads(m.value) for m in await consume(broker, namespace.topics["records"], 8)]
    assert len(records) == 8
    for record in records:
        assert record["owner"] == "alice"
        assert record["priority"] == expected[record["job_id"]], record
    jobs = [orjson.loads(m.value) for m in await consume(broker, namespace.topics["jobs"], 4)]
    assert {j["job_id"]: j["priority"] for j in jobs} == expected


async def test_records_published_by_the_api_land_on_their_keys_partitions_in_order(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    # A submit builds record batches per partition itself (stream_app.kafka.bulk_publish): each
    # record must still be keyed `<job_id>#<index>` on the partition Kafka's default
    # partitioner gives that key, once, in index order within its partition, as sent.
    partitions = 4
    service = start(kafka_partitions=partitions, claude_requests_per_minute=1)
    sent = [
        {"text": f"Note {i}: {'ünï ' * (i % 5)}shipped.", "id": f"n{i}", "metadata": {"i": i}}
        for i in range(600)
    ]
    sent[7] = {"text": "No id, no metadata."}
    with service.client() as client:
        ndjson = client.post(
            "/api/v1/batch",
            content=b"".join(orjson.dumps(r) + b"\n" for r in sent),
            headers={"content-type": "application/x-ndjson"},
        )
        whole = client.post("/api/v1/batch", json={"records": sent})
    assert [ndjson.status_code, whole.status_code] == [202, 202], [ndjson.text, whole.text]
    jobs = {ndjson.json()["job_id"], whole.json()["job_id"]}
    # 600 records: more than BATCH_BULK_JOB_RECORDS (500), so on the bulk record topic.
    messages = await consume(broker, namespace.topics["records_bulk"], 2 * len(sent))
    assert len(messages) == 2 * len(sent)
    seen: dict[str, list[int]] = {job_id: [] for job_id in jobs}
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        payload = orjson.loads(message.value)
        job_id, index = payload["job_id"], payload["index"]
        assert message.key == f"{job_id}#{index}".encode()
        assert message.partition == partition_of(f"{job_id}#{index}", partitions)
        assert index > last.get((job_id, message.partition), -1)
        last[(job_id, message.partition)] = index
        expected = {"metadata": {}, **sent[index]}
        assert payload["record"] == expected
        assert payload["created_follows"] is True
        seen[job_id].append(index)
    assert {job_id: sorted(indexes) for job_id, indexes in seen.items()} == {
        job_id: list(range(len(sent))) for job_id in jobs
    }
    # Every partition got records.
    assert len({m.partition for m in messages}) == partitions
