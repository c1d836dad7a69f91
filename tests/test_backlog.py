"""A backlog deeper than what a worker reads ahead holds back neither the job's status nor
a cancel (issue 9's new-user trial: a 100,000-record job showed `pending`, 0 done, for
minutes, and its cancel answered `503 cancel_pending`).

Faust reads every topic of a worker through one fetch loop. The records of a big job fill
the look-ahead and the process agent's stream buffer (Faust's `stream_buffer_maxsize`,
4096); the loop then waits on `batch.records` at the processing rate, and the results and
the cancel on `batch.results` and `batch.jobs` wait behind the records. Here 6,000 records
run at about 10 a second (2 call slots, 200 ms a call) behind a look-ahead of 10, so
without the fix the status shows no outcome for minutes.
"""

from __future__ import annotations

import json
import time

import httpx

from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import status, wait_until

TOTAL = 6000


def test_status_and_cancel_are_not_held_behind_a_deep_backlog(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_ms=200)
    service = start(batch_max_concurrent_llm_calls=2, batch_lookahead_records=10)
    body = "\n".join(f'{{"text": "Backlog note {i}: the app logs me out."}}' for i in range(TOTAL))
    with service.client() as client:
        reply = client.post(
            "/api/v1/batch", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        submitted = time.monotonic()

        # Outcomes show while the backlog is still deep (at 10 a second, 6,000 records
        # take ten minutes): the status follows the calls within seconds.
        last: dict[str, object] = {}

        def counting() -> dict[str, object] | None:
            last.update(status(client, job_id, params={"limit": "0"}))
            return dict(last) if last["completed_count"] >= 20 else None

        try:
            running = wait_until(counting, timeout=30, interval=0.2, what="20 outcomes counted")
        except TimeoutError:
            calls = len(simulator.stats()["requests"])
            raise AssertionError(f"after {calls} calls the status still says {last}") from None
        assert running["status"] == "running"
        seen_after = time.monotonic() - submitted
        calls = len(simulator.stats()["requests"])
        # The count trails the calls by at most the calls of a few seconds.
        assert running["completed_count"] >= calls - 60, (running["completed_count"], calls)

        # A cancel is applied by the job's owner at once, not after the backlog.
        sent = time.monotonic()
        cancel = client.post(f"/api/v1/batch/{job_id}/cancel")
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["status"] == "cancelled"
        cancel_seconds = time.monotonic() - sent

        # Every record ends with exactly one outcome: the ones called, and the rest skipped.
        def settled() -> dict[str, object] | None:
            body = status(client, job_id, params={"limit": "0"})
            done = body["completed_count"] + body["failed_count"] + body["skipped_count"]
            return body if done == TOTAL else None

        final = wait_until(settled, timeout=180, interval=0.5, what="every record settled")
        called = simulator.stats()["requests"]
        assert final["status"] == "cancelled"
        assert final["failed_count"] == 0
        assert final["completed_count"] == len(called)
        assert final["skipped_count"] == TOTAL - len(called) > TOTAL // 2
        assert final["input_tokens"] == simulator.stats()["total_input_tokens_billed"]
        with client.stream("GET", f"/api/v1/batch/{job_id}/results.ndjson") as stream:
            indexes = [json.loads(line)["index"] for line in stream.iter_lines() if line]
        assert sorted(indexes) == list(range(TOTAL))
    print(
        f"20 outcomes counted {seen_after:.1f} s after the submit; cancel answered in "
        f"{cancel_seconds:.2f} s; {len(called)} calls, {final['skipped_count']} skipped"
    )
    assert httpx.get(f"{service.base_url}/api/v1/health").status_code == 200
