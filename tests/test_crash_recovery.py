"""Crash anywhere, lose nothing, pay once: the worker as a real subprocess, killed for real."""

from __future__ import annotations

import signal
from typing import Any

from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import status, submit, wait_completed, wait_until

TEXTS = [
    f"Incident {i}: the nightly export to the warehouse failed at step {i % 7}. "
    f"Operators restarted it by hand and asked for an alert."
    for i in range(60)
]


def results_at_least(client: Any, job_id: str, count: int) -> Any:
    def probe() -> dict[str, Any] | None:
        body = status(client, job_id)
        return body if len(body["results"]) >= count else None

    return wait_until(probe, timeout=90, interval=0.05, what=f"{count} results")


def test_sigkill_twice_during_a_job_loses_nothing_and_pays_little(
    start: StartService, simulator: SimulatorHandle, tmp_path
) -> None:
    simulator.configure(latency_ms=120)
    workdir = tmp_path / "node"
    concurrency = 5
    first = start(workdir=workdir, batch_max_concurrent_llm_calls=concurrency)
    with first.client() as client:
        finished_job = submit(client, TEXTS[:4])
        finished_before = wait_completed(client, finished_job)
        job_id = submit(client, TEXTS)
        results_at_least(client, job_id, 10)
    first.stop(signal.SIGKILL)

    second = start(workdir=workdir, batch_max_concurrent_llm_calls=concurrency)
    with second.client() as client:
        body = status(client, job_id)
        assert len(body["results"]) >= 10  # what was recorded before the crash survived
        results_at_least(client, job_id, 30)
    second.stop(signal.SIGKILL)

    third = start(workdir=workdir, batch_max_concurrent_llm_calls=concurrency)
    with third.client() as client:
        final = wait_completed(client, job_id)
        assert status(client, finished_job) == finished_before

    indices = [r["index"] for r in final["results"]]
    assert sorted(indices) == list(range(len(TEXTS)))
    assert final["completed_count"] + final["failed_count"] == len(TEXTS)
    assert final["failed_count"] == 0
    assert final["total_tokens_used"] == sum(r["tokens_used"] for r in final["results"])
    assert final["total_tokens_used"] == sum(
        r["response"]["metadata"]["tokens_used"] for r in final["results"]
    )
    calls = len(simulator.stats()["requests"])
    # Every record once (plus the finished job's), and at most the calls that were in
    # flight at each of the two crashes paid again.
    repeated = calls - len(TEXTS) - 4
    print(f"provider calls={calls} repeated after two SIGKILLs={repeated}")
    assert 0 <= repeated <= 2 * concurrency, calls


def test_sigterm_drains_calls_in_flight_and_pays_once(
    start: StartService, simulator: SimulatorHandle, tmp_path
) -> None:
    simulator.configure(latency_ms=1500)
    workdir = tmp_path / "node"
    service = start(workdir=workdir, batch_max_concurrent_llm_calls=3)
    with service.client() as client:
        job_id = submit(client, TEXTS[:12])
    wait_until(lambda: simulator.stats()["in_flight"] == 3, timeout=30, what="3 calls in flight")
    assert service.stop(signal.SIGTERM) == 0
    stats = simulator.stats()
    # The three calls finished (not cut off), and no new call started after SIGTERM.
    assert stats["in_flight"] == 0
    assert stats["by_status"] == {"200": 3}
    assert "drained calls_abandoned=0" in service.logs()

    simulator.configure(latency_ms=0)
    again = start(workdir=workdir, batch_max_concurrent_llm_calls=3)
    with again.client() as client:
        final = wait_completed(client, job_id)
    assert sorted(r["index"] for r in final["results"]) == list(range(12))
    assert final["completed_count"] == 12
    assert len(simulator.stats()["requests"]) == 12  # the drained three were not paid twice
