"""The whole service as users run it: a subprocess on the real broker and simulator."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from simulator.testing import SimulatorHandle
from stream_app.running.embedded import free_port
from tests.conftest import PrivateBroker, StartService
from tests.support import (
    pace_bound,
    status,
    submit,
    submit_on_every_partition,
    wait_completed,
    wait_until,
)

SECRET = "sk-test-secret-do-not-log"
TEXTS = [
    f"Ticket {i}: the invoice page shows the wrong total for order {1000 + i}. "
    f"The customer asks for a corrected invoice and a refund of the difference."
    for i in range(40)
]


def assert_every_index_once(body: dict[str, Any], total: int) -> None:
    indices = [r["index"] for r in body["results"]]
    assert sorted(indices) == list(range(total))


def assert_money_adds_up(body: dict[str, Any], sim: dict[str, Any]) -> None:
    """Tokens equal what the provider billed; cost is exact from the split."""
    per_record = sum(r["tokens_used"] for r in body["results"])
    in_response = sum(
        r["response"]["metadata"]["tokens_used"] for r in body["results"] if r["success"]
    )
    billed_in, billed_out = sim["total_input_tokens_billed"], sim["total_output_tokens_billed"]
    assert body["input_tokens"] == billed_in and body["output_tokens"] == billed_out
    assert body["total_tokens_used"] == billed_in + billed_out == per_record
    if body["failed_count"] == 0:
        assert in_response == body["total_tokens_used"]
    # The default model's list price (Sonnet 5.5: $2 in and $10 out per million tokens,
    # Anthropic's price list as genai-prices records it), written out here so the check
    # does not reuse the pricing code it checks.
    expected = (billed_in * Decimal(2) + billed_out * Decimal(10)) / Decimal(1_000_000)
    assert Decimal(body["estimated_cost_usd"]) == expected
    assert body["estimated_cost"] == float(round(expected, 8))


def test_batch_completes_with_exact_results_tokens_and_cost(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_ms=60)
    service = start(batch_max_concurrent_llm_calls=5)
    with service.client() as client:
        job_id = submit(client, TEXTS)
        body = wait_completed(client, job_id)
    assert body["completed_count"] == 40 and body["failed_count"] == 0
    assert body["total_records"] == 40
    assert_every_index_once(body, 40)
    sim = simulator.stats()
    assert sim["by_status"] == {"200": 40}
    assert_money_adds_up(body, sim)
    for result in body["results"]:
        response = result["response"]
        first_sentence = TEXTS[result["index"]].split(". ")[0]
        assert response["summary"].startswith(first_sentence[:20]), response["summary"]
        assert response["sentiment"] in {"positive", "neutral", "negative", "mixed"}
        assert response["metadata"]["model"] == "claude-sonnet-5-5"
    # Never more calls in flight than the per-worker cap (that it is reached is checked in
    # test_concurrency_cap_per_worker, with a latency that leaves a margin).
    assert sim["max_in_flight"] <= 5
    service.stop()
    assert SECRET not in service.logs()


def test_requests_are_paced_under_the_per_minute_budget(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """A 60 s window cannot be checked in a test that lasts seconds, so the pace is checked
    in short windows against the timetable's bound: at most ceil(rpm * w / 60) + 1 requests
    in any w seconds. 36 records with 8 calls allowed at once would go out in a second or
    two if the budget were ignored; at 180 a minute they take ~12 s."""
    rpm = 180
    service = start(claude_requests_per_minute=rpm, batch_max_concurrent_llm_calls=8)
    with service.client() as client:
        job_id = submit(client, TEXTS[:36])
        body = wait_completed(client, job_id)
    assert body["completed_count"] == 36
    stats = simulator.stats()
    assert stats["by_status"] == {"200": 36}
    for window in (1.0, 2.0, 5.0):
        assert simulator.max_requests_in_window(window) <= pace_bound(rpm, window), window
    arrivals = sorted(r["t"] for r in stats["requests"])
    # Smooth: the slot spacing (61.8 s / rpm) holds over the 35 gaps, no burst at the start.
    assert arrivals[-1] - arrivals[0] >= 35 * 61.8 / rpm - 0.5


def test_concurrency_cap_per_worker(start: StartService, simulator: SimulatorHandle) -> None:
    """Never above the cap, and the cap reached: with 12 records waiting, three calls start
    within a few 10 ms slots of each other, far less than the 500 ms each one lasts."""
    simulator.configure(latency_ms=500)
    service = start(batch_max_concurrent_llm_calls=3)
    with service.client() as client:
        wait_completed(client, submit(client, TEXTS[:12]))
    assert simulator.stats()["max_in_flight"] == 3


def test_partial_results_show_while_the_job_runs(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_ms=400)
    service = start(batch_max_concurrent_llm_calls=2)
    with service.client() as client:
        job_id = submit(client, TEXTS[:10])

        def partial() -> dict[str, Any] | None:
            body = status(client, job_id)
            return body if 0 < len(body["results"]) < 10 else None

        body = wait_until(partial, timeout=30, what="some but not all results")
        assert body["status"] == "running"
        assert len(body["results"]) == body["completed_count"] + body["failed_count"]
        assert len({r["index"] for r in body["results"]}) == len(body["results"])
        final = wait_completed(client, job_id)
    assert_every_index_once(final, 10)


def test_failing_records_are_isolated(start: StartService, simulator: SimulatorHandle) -> None:
    texts = [
        "All good here. The product works well.",
        "Please analyse this. [[sim:fail-400]]",
        "Transient. [[sim:fail-500-once]]",
        "Busy provider. [[sim:overloaded-once]]",
        "Bad output first. [[sim:bad-json-once]]",
        "Never works. [[sim:fail-500-always]]",
        "Throttled. [[sim:429-twice]]",
        "Another fine record. Nothing to see.",
    ]
    service = start(batch_record_retry_count=1)
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
    by_index = {r["index"]: r for r in body["results"]}
    assert_every_index_once(body, len(texts))
    assert [by_index[i]["success"] for i in range(8)] == [
        True,
        False,
        True,
        True,
        True,
        False,
        True,
        True,
    ]
    assert (body["completed_count"], body["failed_count"]) == (6, 2)
    assert body["status"] == "completed"
    assert "invalid_request_error" in by_index[1]["error"] and by_index[1]["attempts"] == 1
    # A 5xx at the same moment as other records' uses up no retry (the provider's trouble,
    # issue 8): the always-failing record makes its 2 attempts, plus one for a first attempt
    # that coincided, plus one if it was the breaker's (single) probe.
    assert by_index[5]["error"].startswith("HTTP 500") and 2 <= by_index[5]["attempts"] <= 4
    # Two 429s, one retry allowed: 429s do not use up retries, so the third attempt runs.
    assert by_index[6]["success"] and by_index[6]["attempts"] == 3
    sim = simulator.stats()
    failed_500 = 1 + by_index[5]["attempts"]
    assert sim["by_status"] == {"200": 7, "400": 1, "500": failed_500, "529": 1, "429": 2}
    # The invalid structured output was billed, so it is in the record's and job's tokens.
    assert by_index[4]["tokens_used"] > by_index[4]["response"]["metadata"]["input_tokens"]
    assert_money_adds_up(body, sim)


def test_bad_http_input_gets_a_clear_4xx(start: StartService) -> None:
    service = start(batch_max_records_per_request=3, batch_max_text_chars=200)
    too_long = orjson.dumps({"records": [{"text": "x" * 201}]})
    too_many = orjson.dumps({"records": [{"text": f"Record {i}."} for i in range(4)]})
    cases = [
        (b"not json", 400, "invalid_json"),
        (b'{"records": "x"}', 422, "validation_error"),
        (b'{"records": []}', 422, "validation_error"),
        (b'{"records": [{"id": "a"}]}', 422, "validation_error"),
        (b'{"records": [{"text": "   "}]}', 422, "validation_error"),
        (b'{"records": [{"text": 5}]}', 422, "validation_error"),
        (b"[1, 2]", 422, "validation_error"),
        (b'{"records": [{"text": "ok"}], "extra": 1}', 422, "validation_error"),
        (too_long, 422, "validation_error"),  # BATCH_MAX_TEXT_CHARS
        (too_many, 413, "too_many_records"),  # BATCH_MAX_RECORDS_PER_REQUEST
    ]
    with service.client() as client:
        for body, code, error in cases:
            reply = client.post(
                "/api/v1/batch", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == code, (body[:80], reply.text)
            assert reply.json()["error"]["code"] == error
            assert reply.json()["error"]["message"]
        reply = client.post(
            "/api/v1/batch", content=too_long, headers={"content-type": "application/json"}
        )
        assert "201 characters, at most 200 are allowed" in reply.json()["error"]["message"]
        for path, code, error in [
            ("/api/v1/batch/nope/status", 404, "job_not_found"),
            ("/api/v1/nothing", 404, "not_found"),
            ("/api/v1/batch/abc/status?limit=-1", 400, "invalid_parameter"),
            ("/api/v1/batch/abc/status?offset=x", 400, "invalid_parameter"),
            ("/api/v1/batch/abc/status?offset=%C2%B2", 400, "invalid_parameter"),
            ("/api/v1/batch/abc/status?limit=%D9%A3", 400, "invalid_parameter"),
        ]:
            reply = client.get(path)
            assert (reply.status_code, reply.json()["error"]["code"]) == (code, error), path
        reply = client.get("/api/v1/batch/jobs?x=1")
        assert reply.status_code == 200 and reply.json()["jobs"] == []
        # Still working after all that, and nothing was half-created. The limits are
        # inclusive: three records, one of exactly 200 characters, are accepted.
        longest = ("Still alive. Works. " * 10)[:200]
        job_id = submit(client, [longest, "Still alive. Works.", "Fine. Done."])
        body = wait_completed(client, job_id)
        assert body["completed_count"] == 3
        assert [j["job_id"] for j in client.get("/api/v1/batch/jobs").json()["jobs"]] == [job_id]


def test_results_can_be_paged(start: StartService) -> None:
    service = start()
    with service.client() as client:
        job_id = submit(client, TEXTS[:7])
        wait_completed(client, job_id)
        page = status(client, job_id, params={"offset": 2, "limit": 3})
    assert [r["index"] for r in page["results"]] == [2, 3, 4]
    assert page["completed_count"] == 7


def test_api_keys_authenticate_and_scope_jobs(start: StartService) -> None:
    service = start(api_keys="alice:alice-secret,bob:bob-secret")
    alice = {"authorization": "Bearer alice-secret"}
    bob = {"authorization": "Bearer bob-secret"}
    with service.client() as client:
        reply = client.post("/api/v1/batch", json={"records": [{"text": "x y z"}]})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthorized"
        wrong = {"authorization": "Bearer nope"}
        assert client.get("/api/v1/batch/jobs", headers=wrong).status_code == 401
        job_id = submit(client, ["Alice's ticket. It broke."], headers=alice)
        wait_completed(client, job_id, headers=alice)
        assert client.get(f"/api/v1/batch/{job_id}/status", headers=bob).status_code == 404
        assert client.get("/api/v1/batch/jobs", headers=bob).json()["jobs"] == []
        listed = client.get("/api/v1/batch/jobs", headers=alice).json()["jobs"]
        assert [j["job_id"] for j in listed] == [job_id]
        # Probes stay open for the orchestrator.
        assert client.get("/api/v1/health").status_code == 200


@pytest.mark.parametrize("backend", ["memory", "rocksdb", "sqlite"])
def test_restart_on_same_broker_and_data_loses_nothing(
    start: StartService, simulator: SimulatorHandle, tmp_path, backend: str
) -> None:
    workdir = tmp_path / "node"
    service = start(workdir=workdir, batch_persistence_backend=backend)
    with service.client() as client:
        job_id = submit(client, TEXTS[:6])
        before = wait_completed(client, job_id)
    assert service.stop() == 0
    calls = len(simulator.stats()["requests"])
    again = start(workdir=workdir, batch_persistence_backend=backend)
    with again.client() as client:
        after = status(client, job_id)
        jobs = client.get("/api/v1/batch/jobs").json()["jobs"]
        # A redelivered record would be handled after ready, not before: new records on
        # every partition, done, mean everything published before them was consumed.
        sentinels = submit_on_every_partition(client, partitions=4)
        for sentinel in sentinels:
            wait_completed(client, sentinel)
        assert status(client, job_id) == before
    wait_until(lambda: simulator.stats()["in_flight"] == 0, timeout=10, what="no call in flight")
    assert after == before
    assert [j["job_id"] for j in jobs] == [job_id]
    # Nothing was processed twice: the only new calls are the sentinels' own.
    assert len(simulator.stats()["requests"]) == calls + 4 * len(sentinels)


def test_sqlite_backend_mirrors_jobs_and_results(start: StartService, tmp_path) -> None:
    workdir = tmp_path / "sqlite-node"
    service = start(workdir=workdir, batch_persistence_backend="sqlite")
    with service.client() as client:
        job_id = submit(client, TEXTS[:5])
        body = wait_completed(client, job_id)
        listed = client.get("/api/v1/batch/jobs").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]
    service.stop()
    db = sqlite3.connect(workdir / "batch.db")
    row = db.execute(
        "SELECT status, total_records, completed_count, total_tokens_used FROM batch_jobs"
    ).fetchall()
    assert row == [("completed", 5, 5, body["total_tokens_used"])]
    indices = db.execute("SELECT record_index FROM batch_results ORDER BY 1").fetchall()
    assert [i for (i,) in indices] == [0, 1, 2, 3, 4]


def test_sqlite_mirror_survives_the_loss_of_the_broker(
    start: StartService, private_broker: PrivateBroker, tmp_path
) -> None:
    port = free_port()
    node = {
        "workdir": tmp_path / "node",
        "batch_persistence_backend": "sqlite",
        "kafka_bootstrap_servers": f"127.0.0.1:{port}",
    }
    first_broker = private_broker(port)
    service = start(**node)
    with service.client() as client:
        job_id = submit(client, TEXTS[:3])
        before = wait_completed(client, job_id)
    service.stop()
    first_broker.stop()  # an ephemeral broker: every topic and changelog is gone

    private_broker(port)
    again = start(**node)
    with again.client() as client:
        assert status(client, job_id) == before
        listed = client.get("/api/v1/batch/jobs").json()["jobs"]
        assert [j["job_id"] for j in listed] == [job_id]
        # And the new, empty broker takes new work.
        assert wait_completed(client, submit(client, TEXTS[:2]))["completed_count"] == 2
    assert "discarded the local state" in again.logs()


def test_readiness_reports_the_broker(start: StartService, private_broker: PrivateBroker) -> None:
    port = free_port()
    own_broker = private_broker(port)
    service = start(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    with service.client() as client:
        ready = client.get("/api/v1/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"broker": "ok", "assignment": "ok", "storage": "ok"}
        own_broker.stop()

        def not_ready() -> httpx.Response | None:
            reply = client.get("/api/v1/ready")
            return reply if reply.status_code == 503 else None

        reply = wait_until(not_ready, timeout=30, what="/ready to turn 503")
        assert reply.json()["ready"] is False
        assert reply.json()["checks"]["broker"].startswith("unreachable")
        assert client.get("/api/v1/health").status_code == 200
