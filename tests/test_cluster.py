"""Several workers, one provider budget: the sum stays within it, and any worker answers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from simulator.testing import SimulatorHandle
from stream_app.running.embedded import free_port
from tests.conftest import StartService
from tests.support import (
    ServiceProcess,
    pace_bound,
    partition_of,
    status,
    submit,
    wait_completed,
    wait_until,
)

PARTITIONS = 4  # the `start` fixture's KAFKA_PARTITIONS
TEXTS = [
    f"Call note {i}: the customer could not log in after the password reset and was "
    f"transferred twice. They want a callback tomorrow morning."
    for i in range(60)
]


def start_cluster(
    start: StartService,
    tmp_path: Path,
    per_worker: tuple[Mapping[str, object], ...] = ({}, {}),
    settle_timeout: float = 120,
    **env: object,
) -> list[ServiceProcess]:
    workers = [
        start(workdir=tmp_path / f"w{i}", **{**env, **own}) for i, own in enumerate(per_worker)
    ]

    def settled() -> bool:
        # After the second worker joins, the group rebalances: wait until the two hold
        # disjoint halves of the record partitions and both are ready.
        try:
            replies = [httpx.get(f"{w.base_url}/api/v1/ready", timeout=5) for w in workers]
        except httpx.HTTPError:  # a busy worker (a loaded machine) answers later
            return False
        owned = [set(r.json()["partitions"]) for r in replies]
        return (
            all(r.status_code == 200 for r in replies)
            and sorted(owned[0] | owned[1]) == list(range(PARTITIONS))
            and not owned[0] & owned[1]
        )

    wait_until(
        settled, timeout=settle_timeout, interval=0.2, what="both workers ready with half each"
    )
    return workers


def owned_partitions(worker: ServiceProcess) -> set[int]:
    return set(httpx.get(f"{worker.base_url}/api/v1/ready", timeout=2).json()["partitions"])


def arrivals(stats: dict[str, Any]) -> list[float]:
    return sorted(r["t"] for r in stats["requests"])


def test_two_workers_share_one_budget(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """The pace of the two together keeps the timetable's bound, ceil(rpm * w / 60) + 1 in
    any w seconds (a 60 s window cannot be exceeded by a job of seconds). Two workers that
    each took the whole budget would send at twice the rate and break it."""
    rpm = 180
    simulator.configure(latency_ms=30)
    workers = start_cluster(
        start, tmp_path, claude_requests_per_minute=rpm, batch_max_concurrent_llm_calls=8
    )
    with workers[0].client() as first, workers[1].client() as second:
        job_id = submit(first, TEXTS[:36])
        body = wait_completed(second, job_id)  # answered by whichever worker owns the job
        assert status(first, job_id) == body
    assert sorted(r["index"] for r in body["results"]) == list(range(36))
    assert body["failed_count"] == 0
    stats = simulator.stats()
    assert stats["by_status"] == {"200": 36}
    for window in (1.0, 2.0, 5.0):
        assert simulator.max_requests_in_window(window) <= pace_bound(rpm, window), window
    sent = arrivals(stats)
    assert sent[-1] - sent[0] >= 35 * 61.8 / rpm - 0.5
    for worker in workers:
        assert 'budget share partitions="2/4"' in worker.logs()


def test_provider_limit_below_configured_is_adopted(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """A key shared with other clients: the provider allows 120 a minute, we were told 600.

    A worker learns the provider's limit from the headers of its first answer; until then
    it can have sent at most its concurrency (every call it started is still in flight).
    After that the cluster keeps the provider's pace. Ignoring the header, the 30 records
    would go out in about 3 s; kept, they take about 15 s.
    """
    provider_rpm, concurrency = 120, 2
    learning = 2 * concurrency  # calls that may leave before each worker's first answer
    simulator.configure(requests_per_minute=provider_rpm, latency_ms=30)
    workers = start_cluster(
        start, tmp_path, claude_requests_per_minute=600, batch_max_concurrent_llm_calls=concurrency
    )
    with workers[0].client() as client:
        body = wait_completed(client, submit(client, TEXTS[:30]))
    assert body["completed_count"] == 30 and body["failed_count"] == 0
    stats = simulator.stats()
    assert stats["by_status"] == {"200": 30}
    for window in (2.0, 5.0, 10.0):
        bound = pace_bound(provider_rpm, window) + learning
        assert simulator.max_requests_in_window(window) <= bound, window
    sent = arrivals(stats)
    assert sent[-1] - sent[0] >= (30 - 1 - learning) * 61.8 / provider_rpm - 0.5


def test_a_status_read_whose_owner_does_not_answer_is_a_503(
    start: StartService, tmp_path: Path
) -> None:
    """Worker 1 advertises an address where nothing listens (as when it crashed and the
    group has not rebalanced yet): worker 0 cannot forward to it and, keeping no standby
    replica (TABLE_STANDBY_REPLICAS=0), says so. With replicas it answers from its replica
    (tests/test_failover_reads.py)."""
    dead_url = f"http://127.0.0.1:{free_port()}"
    workers = start_cluster(
        start,
        tmp_path,
        per_worker=({}, {"advertised_url": dead_url}),
        table_standby_replicas=0,
    )
    theirs = owned_partitions(workers[1])
    with workers[1].client() as client:
        # Submitted to worker 1, which holds the job itself (or forwards to worker 0).
        jobs = [submit(client, ["Routing check. Fine."]) for _ in range(2)]
        while not any(partition_of(job, PARTITIONS) in theirs for job in jobs):
            jobs.append(submit(client, ["Routing check. Fine."]))
    with workers[0].client() as client:
        for job_id in jobs:
            reply = client.get(f"/api/v1/batch/{job_id}/status")
            if partition_of(job_id, PARTITIONS) in theirs:
                assert reply.status_code == 503, reply.text
                assert reply.json()["error"]["code"] == "owner_unavailable"
            else:
                assert reply.status_code == 200, reply.text
    with workers[1].client() as client:
        owned_by_1 = [job for job in jobs if partition_of(job, PARTITIONS) in theirs]
        assert all(wait_completed(client, job)["completed_count"] == 1 for job in owned_by_1)


def test_calls_in_flight_when_a_worker_joins_are_paid_once(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """A worker joining the group takes partitions with calls in flight on them. The revoke
    lets the calls with Claude send their outcomes (and processed-records entries) first,
    and leaves the records that have not called yet to the partitions' new owner: every
    record is paid exactly once (docs/guarantees-faults.md)."""
    simulator.configure(latency_ms=1500)
    # Two calls at a time, 1.5 s each: the job runs 36 s on one worker, so the second
    # worker joins while it runs, whatever its start takes on a loaded machine.
    first = start(workdir=tmp_path / "w0", batch_max_concurrent_llm_calls=2)
    with first.client() as client:
        job_id = submit(client, TEXTS[:48])
        wait_until(
            lambda: len(simulator.stats()["requests"]) >= 2, timeout=60, what="first answers"
        )
        second = start(workdir=tmp_path / "w1", batch_max_concurrent_llm_calls=2)
        joined = time.time()
        body = wait_completed(client, job_id, timeout=240)
    assert sorted(r["index"] for r in body["results"]) == list(range(48))
    assert body["failed_count"] == 0
    requests = simulator.stats()["requests"]
    # The join came while the job ran: calls were in flight around it and after it.
    assert any(r["t_done"] > joined for r in requests)
    paid = Counter(r["text"] for r in requests if r["status"] == 200)
    assert len(paid) == 48
    assert {text[:14]: n for text, n in paid.items() if n > 1} == {}
    assert 'budget share partitions="2/4"' in second.logs()
    assert "look-ahead dropped records of revoked partitions" in first.logs()
    assert "not finished before the revoke completed" not in first.logs()
