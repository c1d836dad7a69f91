"""Records whose every call gets an HTTP 500 end, also when no other record is there to
show that the provider works (a retry round, the batch lane's hand-back to the live lane):
the worker's canary tells their own fault from an outage. Other jobs are not held up, and
a cancelled or deleted job's records make no more calls (the running service on the real
broker, the real SDK, the simulator)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from simulator.testing import SimulatorHandle
from stream_app.provider.client import CANARY_TEXT
from tests.conftest import StartService
from tests.support import ServiceProcess, status, submit, wait_completed, wait_until
from tests.test_batch_lane import LANE, all_results, logs_on_failure, submit_job

ALWAYS_500 = "[[sim:fail-500-always]]"
# How long a lone failing record may take, and how long a small job submitted meanwhile
# may take, with the default probe timing (first probe after 0.5-1 s, doubling, 15 s cap)
# and one retry: a canary follows a record's second failed probe, about 2-8 s after the
# line stopped. Generous for a loaded 2-core machine; before the canary, they never ended.
ENDS_WITHIN_SECONDS = 45.0
OTHER_JOB_WITHIN_SECONDS = 20.0


def texts(tag: str, good: int, bad: int) -> list[str]:
    return [f"{tag}{i} The parcel came late and the box was damaged." for i in range(good)] + [
        f"{tag}{good + i} The export crashes. {ALWAYS_500}" for i in range(bad)
    ]


def failed_results(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    reply = client.get(f"/api/v1/batch/{job_id}/results", params={"failed": "true"})
    assert reply.status_code == 200, reply.text
    results: list[dict[str, Any]] = reply.json()["results"]
    return results


def calls_with(simulator: SimulatorHandle, tag: str) -> list[dict[str, Any]]:
    return [r for r in simulator.stats()["requests"] if r["text"].startswith(tag)]


def timed_small_job(client: httpx.Client, tag: str) -> float:
    began = time.monotonic()
    job_id = submit(client, texts(tag, good=2, bad=0))
    job = wait_completed(client, job_id, timeout=OTHER_JOB_WITHIN_SECONDS)
    assert (job["completed_count"], job["failed_count"]) == (2, 0)
    return time.monotonic() - began


def all_skipped(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    body = status(client, job_id)
    return body if body["skipped_count"] == body["total_records"] else None


def provider_state(client: httpx.Client) -> str:
    state: str = client.get("/api/v1/ready").json()["provider"]["state"]
    return state


def assert_failed_alone(simulator: SimulatorHandle, service: ServiceProcess) -> None:
    canaries = [r for r in simulator.stats()["requests"] if r["text"] == CANARY_TEXT]
    # Answered (the provider works): each a 1-token request, billed to no job.
    assert canaries and {r["status"] for r in canaries} == {200}
    assert all(r["max_tokens"] == 1 for r in canaries)
    logs = service.logs()
    assert "a canary was answered while a record kept failing" in logs


def test_records_failing_alone_in_a_retry_round_fail_and_hold_no_one_up(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(batch_record_retry_count=1)
    with service.client() as client, logs_on_failure(service):
        job_id = submit(client, texts("R", good=3, bad=2))
        first = wait_completed(client, job_id, timeout=ENDS_WITHIN_SECONDS + 30)
        assert (first["completed_count"], first["failed_count"]) == (3, 2)
        calls_before = len(calls_with(simulator, "R"))
        reply = client.post(f"/api/v1/batch/{job_id}/retry", json={"failed": True})
        assert reply.status_code == 202 and reply.json()["records"] == 2, reply.text
        began = time.monotonic()
        # The two records alone look like an outage at first: the line stops.
        wait_until(lambda: provider_state(client) == "unavailable", timeout=20, what="stop")
        other = timed_small_job(client, "S")
        after = wait_completed(client, job_id, timeout=ENDS_WITHIN_SECONDS)
        ended = time.monotonic() - began
        assert (after["completed_count"], after["failed_count"]) == (3, 2)
        failed = failed_results(client, job_id)
        assert sorted(r["index"] for r in failed) == [3, 4]
        for result in failed:
            assert result["error"].startswith("HTTP 500 api_error"), result
    # The round's calls: two records, each a bounded number of times.
    round_calls = calls_with(simulator, "R")[calls_before:]
    assert {r["status"] for r in round_calls} == {500}
    assert 2 <= len(round_calls) <= 2 * 9
    assert_failed_alone(simulator, service)
    print(f"retry round ended in {ended:.1f} s; a 2-record job meanwhile took {other:.1f} s")


def test_records_the_batch_lane_hands_back_fail_on_the_live_lane(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=1.0)
    service = start(batch_lane_max_requests=100, batch_record_retry_count=1, **LANE)
    with service.client() as client, logs_on_failure(service):
        job_id = submit_job(client, texts("L", good=4, bad=2), lane="batch")
        job = wait_completed(client, job_id, timeout=120)
        results = {r["index"]: r for r in all_results(client, job_id)}
    assert (job["completed_count"], job["failed_count"]) == (4, 2)
    assert sorted(results) == list(range(6))
    for index in (4, 5):
        assert results[index]["error"].startswith("HTTP 500 api_error"), results[index]
    # Errored in the batch, then failed on the live lane (every live call of theirs a 500).
    live = calls_with(simulator, "L")
    assert live and {r["status"] for r in live} == {500}
    assert_failed_alone(simulator, service)


def test_cancelling_or_deleting_a_job_stops_its_waiting_records_calls_at_once(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # Probes a minute apart: the failing records wait at the breaker when the job ends.
    service = start(
        batch_record_retry_count=3,
        batch_probe_base_seconds=60,
        batch_probe_max_seconds=60,
    )
    with service.client() as client, logs_on_failure(service):
        for tag, end in (("C", "cancel"), ("D", "delete")):
            job_id = submit(client, texts(tag, good=0, bad=3))
            wait_until(
                lambda: provider_state(client) == "unavailable", timeout=30, what="line stopped"
            )
            calls = len(calls_with(simulator, tag))
            if end == "cancel":
                reply = client.post(f"/api/v1/batch/{job_id}/cancel")
                assert reply.status_code in (200, 202), reply.text
                job = wait_until(
                    lambda: all_skipped(client, job_id),  # noqa: B023 (called at once)
                    timeout=10,
                    what="every record skipped",
                )
                assert job["status"] == "cancelled" and job["failed_count"] == 0
                for result in job["results"]:
                    assert result["error"].startswith("skipped: the job was cancelled while")
                    assert result["attempts"] >= 1
            else:
                reply = client.delete(f"/api/v1/batch/{job_id}")
                assert reply.status_code == 200, reply.text
            # The records left the breaker's line: the next job's record probes at once.
            assert timed_small_job(client, f"N{tag}") < OTHER_JOB_WITHIN_SECONDS
            assert provider_state(client) == "available"
            assert len(calls_with(simulator, tag)) == calls
