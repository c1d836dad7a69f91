"""A job can never stay `running` with every outcome on Kafka: its count is corrupted on
purpose in the worker's own store, and the worker notices and repairs it from Kafka."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import status, submit, wait_completed, wait_until

TEXTS = [f"Ticket {i}: the export failed twice and the customer wants a refund." for i in range(6)]


def corrupt_counts(workdir: Path, job_id: str, completed: int) -> int:
    """Set the job's stored status to `running` with `completed` outcomes, in every local
    job-status store that holds it (the worker is stopped); returns how many."""
    changed = 0
    for store in sorted((workdir / "state").rglob("job-status-*.db")):
        db = Rdict(str(store), options=Options(raw_mode=True), access_type=AccessType.read_write())
        try:
            key = json.dumps(job_id).encode()
            raw = db.get(key)
            if raw is not None:
                job = json.loads(raw)
                job.update(status="running", completed_count=completed, updated_at=time.time() - 60)
                db[key] = json.dumps(job).encode()
                changed += 1
        finally:
            db.close()
    return changed


def test_a_job_whose_count_was_corrupted_is_repaired_from_kafka(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    workdir = tmp_path / "node"
    first = start(workdir=workdir)
    with first.client() as client:
        job_id = submit(client, TEXTS)
        before = wait_completed(client, job_id)
    assert first.stop() == 0
    assert corrupt_counts(workdir, job_id, completed=3) == 1

    again = start(workdir=workdir, batch_audit_quiet_seconds=2)
    with again.client() as client:
        # The worker's own store says 3 of 6: nothing on Kafka will ever change that but
        # the audit (every outcome is on batch.results, the group's offsets at its end).
        assert status(client, job_id)["completed_count"] == 3
        after = wait_completed(client, job_id, timeout=90)
    assert {k: after[k] for k in ("completed_count", "failed_count", "total_tokens_used")} == {
        k: before[k] for k in ("completed_count", "failed_count", "total_tokens_used")
    }
    assert sorted(r["index"] for r in after["results"]) == list(range(len(TEXTS)))
    wait_until(
        lambda: "job counts disagreed with Kafka: repaired" in again.logs(),
        timeout=10,
        what="the repair's log line",
    )
    assert len(simulator.stats()["requests"]) == len(TEXTS)  # nothing paid again
