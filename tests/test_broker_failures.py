"""The broker restarts, or the worker's local state cannot match the broker: the worker heals
by itself, or exits non-zero to be restarted. It never idles half-alive."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from rocksdict import AccessType, Options, Rdict

from simulator.testing import SimulatorHandle
from stream_app.kafka.local_state import FAUST_OFFSET_KEY
from stream_app.running.embedded import free_port
from tests.conftest import PrivateBroker, StartService
from tests.support import status, submit, wait_completed, wait_until

TEXTS = [
    f"Report {i}: the mobile app logs users out after every update to version 3.{i}. "
    f"Several customers asked for a fix before the weekend."
    for i in range(40)
]


def corrupt_persisted_offsets(workdir: Path) -> list[str]:
    """Make every local table store claim it applied changelog offset 10**9."""
    corrupted = []
    for store in sorted((workdir / "state").rglob("*.db")):
        db = Rdict(str(store), options=Options(raw_mode=True), access_type=AccessType.read_write())
        try:
            if db.get(FAUST_OFFSET_KEY) is not None:
                db[FAUST_OFFSET_KEY] = str(10**9).encode()
                corrupted.append(store.name)
        finally:
            db.close()
    return corrupted


def finished_job(start: StartService, workdir: Path, **env: object) -> tuple[str, dict[str, Any]]:
    service = start(workdir=workdir, **env)
    with service.client() as client:
        job_id = submit(client, TEXTS[:6])
        before = wait_completed(client, job_id)
    assert service.stop() == 0
    return job_id, before


def test_local_store_ahead_of_its_changelog_is_rebuilt_from_the_changelog(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    workdir = tmp_path / "node"
    job_id, before = finished_job(start, workdir)
    corrupted = corrupt_persisted_offsets(workdir)
    assert any(name.startswith("job-status-") for name in corrupted), corrupted

    again = start(workdir=workdir)  # waits until /api/v1/ready is 200
    with again.client() as client:
        assert status(client, job_id) == before
        assert wait_completed(client, submit(client, TEXTS[6:9]))["completed_count"] == 3
    logs = again.logs()
    assert logs.count("ahead of its changelog") == len(corrupted)
    assert len(simulator.stats()["requests"]) == 9  # nothing was paid again


def test_a_worker_that_cannot_recover_exits_non_zero_instead_of_idling(
    start: StartService, tmp_path: Path
) -> None:
    workdir = tmp_path / "node"
    finished_job(start, workdir)
    corrupt_persisted_offsets(workdir)

    # With healing off, Faust's recovery refuses the store (ConsistencyError).
    stuck = start(workdir=workdir, wait=False, batch_heal_local_state="false")
    health: list[int] = []

    def exited() -> bool:
        try:
            health.append(httpx.get(f"{stuck.base_url}/api/v1/health", timeout=2).status_code)
        except httpx.HTTPError:
            pass
        return stuck.process.poll() is not None

    wait_until(exited, timeout=90, interval=0.2, what="the stuck worker to exit")
    assert stuck.process.returncode == 1, stuck.logs()[-3000:]
    assert 200 not in health[-3:], health  # liveness did not claim ok while it was failing
    logs = stuck.logs()
    assert "worker cannot become ready; stopping so it is restarted" in logs
    assert "ConsistencyError" in logs


def test_broker_restart_mid_job_finishes_exactly_once(
    start: StartService,
    simulator: SimulatorHandle,
    private_broker: PrivateBroker,
    tmp_path: Path,
) -> None:
    simulator.configure(latency_ms=300)
    port, data = free_port(), tmp_path / "kafka"
    broker = private_broker(port, data=data)
    concurrency = 2
    # The 40 records go to the bulk record topic (more than 20), read 5 at a time (half a
    # look-ahead of 10): a backlog deeper than the look-ahead when the broker dies.
    service = start(
        workdir=tmp_path / "node",
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        batch_max_concurrent_llm_calls=concurrency,
        batch_bulk_job_records=20,
        batch_lookahead_records=10,
    )
    with service.client() as client:
        job_id = submit(client, TEXTS)
        wait_until(
            lambda: len(status(client, job_id)["results"]) >= 10, timeout=60, what="10 results"
        )
        broker.kill()  # the broker process dies; its files stay
        at_crash = len(simulator.stats()["requests"])
        private_broker(port, data=data)  # the same storage: a restart, not a loss
        final = wait_completed(client, job_id, timeout=180)
    service.ensure_alive()
    assert sorted(r["index"] for r in final["results"]) == list(range(len(TEXTS)))
    assert final["completed_count"] == len(TEXTS) and final["failed_count"] == 0
    calls = len(simulator.stats()["requests"])
    assert final["total_tokens_used"] == sum(r["tokens_used"] for r in final["results"])
    print(f"broker restart: calls={calls} (records {len(TEXTS)}), at the crash={at_crash}")
    assert at_crash < len(TEXTS)  # the job was still running when the broker died
    # Calls whose results could not be committed while the broker was down may be paid
    # again, at most the calls in flight.
    assert len(TEXTS) <= calls <= len(TEXTS) + concurrency
    assert service.stop(signal.SIGTERM) == 0


def test_a_submit_while_the_broker_is_down_answers_503_and_the_worker_still_stops(
    start: StartService, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    port = free_port()
    broker = private_broker(port)
    service = start(
        workdir=tmp_path / "node",
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_publish_timeout_seconds=3,
    )
    with service.client(timeout=60) as client:
        assert wait_completed(client, submit(client, TEXTS[:2]))["completed_count"] == 2
        broker.kill()
        reply = client.post("/api/v1/batch", json={"records": [{"text": TEXTS[3]}]})
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "broker_unavailable"
        assert "KAFKA_PUBLISH_TIMEOUT_SECONDS" in error["message"]
    # SIGTERM still stops it (the final flush is bounded too), and says what it could not do.
    assert service.stop(signal.SIGTERM, timeout=180) == 0
    assert "outcomes not acknowledged at stop" in service.logs() or "drained" in service.logs()


# docs/guarantees-faults.md: with the broker down, a SIGTERM ends within 15 s once the calls
# in flight are done.
STOP_BOUND_BROKER_DOWN_SECONDS = 15.0


def test_sigterm_while_the_broker_is_down_stops_within_the_bound(
    start: StartService, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    port = free_port()
    broker = private_broker(port)
    service = start(workdir=tmp_path / "node", kafka_bootstrap_servers=f"127.0.0.1:{port}")
    with service.client(timeout=60) as client:
        assert wait_completed(client, submit(client, TEXTS[:2]))["completed_count"] == 2
        # A readiness probe just before: its answer ("broker ok") is cached for a second,
        # and the stop must not take it for the broker's state a moment later.
        assert client.get("/api/v1/ready").status_code == 200
    broker.stop()  # SIGTERM: the broker is gone, its data kept
    signalled = time.monotonic()
    assert service.stop(signal.SIGTERM, timeout=STOP_BOUND_BROKER_DOWN_SECONDS) == 0
    took = time.monotonic() - signalled
    print(f"stop with the broker down: {took:.1f} s")
    assert 'broker="unreachable' in service.logs()


def test_state_built_from_another_kafka_cluster_is_dropped_not_mixed_in(
    start: StartService, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """Switching a worker's state directory between clusters (e.g. EMBEDDED_BROKER=tansu
    then kafka) must not let one cluster's store offsets skip the other's changelog."""
    workdir = tmp_path / "node"
    first_port, second_port = free_port(), free_port()
    first_data = tmp_path / "first-cluster"
    first = private_broker(first_port, data=first_data)
    on_first = {"kafka_bootstrap_servers": f"127.0.0.1:{first_port}"}
    job_id, before = finished_job(start, workdir, **on_first)
    first.stop()

    # A smaller history on another cluster: its changelog offsets are below the first's.
    private_broker(second_port)
    service = start(workdir=workdir, kafka_bootstrap_servers=f"127.0.0.1:{second_port}")
    with service.client() as client:
        assert client.get(f"/api/v1/batch/{job_id}/status").status_code == 404
        assert wait_completed(client, submit(client, TEXTS[6:7]))["completed_count"] == 1
    assert service.stop() == 0
    assert "built from another Kafka cluster" in service.logs()

    # Back on the first cluster: every result of its job is there again.
    private_broker(first_port, data=first_data)
    again = start(workdir=workdir, **on_first)
    with again.client() as client:
        assert status(client, job_id) == before
    assert "built from another Kafka cluster" in again.logs()


def test_sigterm_while_starting_against_a_broker_that_is_down_stops_at_once(
    start: StartService, tmp_path: Path
) -> None:
    """A worker's start waits for the broker; a SIGTERM then must not wait with it (a
    supervisor stopping a worker that is restarting during broker maintenance)."""
    # A broker that takes connections and never answers, as one still starting does (one
    # that refuses connections fails the start at once: exit 3).
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = silent.getsockname()[1]
    service = start(
        workdir=tmp_path / "node", wait=False, kafka_bootstrap_servers=f"127.0.0.1:{port}"
    )
    wait_until(
        lambda: "Waiting for application startup" in service.logs(),
        timeout=60,
        what="the worker is starting",
    )
    signalled = time.monotonic()
    assert service.stop(signal.SIGTERM, timeout=STOP_BOUND_BROKER_DOWN_SECONDS) == 0
    took = time.monotonic() - signalled
    print(f"stop while starting with the broker down: {took:.1f} s")
    assert "stopped while starting: exiting" in service.logs()
    silent.close()
