"""Fair shares on the real broker: a small job is not stuck behind a big one, tenants share
the budget equally whatever their number of jobs, and a `high` job overtakes a `normal` one.

The budget is 600 requests a minute (a call every 0.1 s); FIFO (BATCH_SCHEDULING=fifo)
fails every test here: the small job would wait for the big one's 600 records (a minute),
the tenant with ten jobs would take the window, and the high job would wait its turn.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import status, submit, wait_completed, wait_until

RPM = 600


def texts(label: str, count: int) -> list[str]:
    return [
        f"{label}-{i}: the customer reports that the invoice total is wrong." for i in range(count)
    ]


def results_at_least(client: httpx.Client, job_id: str, count: int, **kw: Any) -> None:
    wait_until(
        lambda: status(client, job_id, params={"limit": "0"}, **kw)["completed_count"] >= count,
        timeout=60,
        what=f"{count} results of {job_id}",
    )


def assert_every_index_once(final: dict[str, Any], total: int) -> None:
    assert sorted(r["index"] for r in final["results"]) == list(range(total))
    assert final["completed_count"] == total and final["failed_count"] == 0


def test_a_small_job_behind_a_big_one_finishes_within_seconds(start: StartService) -> None:
    service = start(claude_requests_per_minute=RPM)
    with service.client() as client:
        big = submit(client, texts("big", 600))
        results_at_least(client, big, 20)
        submitted = time.monotonic()
        small = submit(client, texts("small", 5))
        final = wait_completed(client, small, timeout=90)
        elapsed = time.monotonic() - submitted
        big_now = status(client, big, params={"limit": "0"})
    print(f"5-record job behind a 600-record job completed in {elapsed:.1f} s")
    assert_every_index_once(final, 5)
    # FIFO would need the big job's ~580 remaining records first: about a minute.
    assert elapsed < 15.0, elapsed
    assert big_now["status"] == "running" and big_now["completed_count"] < 500


def test_two_tenants_share_the_budget_equally_whatever_their_number_of_jobs(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(claude_requests_per_minute=RPM, api_keys="alpha:key-alpha,beta:key-beta")
    alpha = {"headers": {"authorization": "Bearer key-alpha"}}
    beta = {"headers": {"authorization": "Bearer key-beta"}}
    with service.client() as client:
        alpha_jobs = [submit(client, texts(f"alpha{n}", 40), **alpha) for n in range(10)]
        beta_job = submit(client, texts("beta0", 300), **beta)
        since = time.time()
        window = 200  # calls: 20 s at 10 a second, both tenants backlogged throughout

        def calls_since() -> list[dict[str, Any]] | None:
            calls = [r for r in simulator.stats()["requests"] if r["t"] >= since]
            return calls if len(calls) >= window else None

        calls = sorted(wait_until(calls_since, timeout=90, what=f"{window} calls"), key=_t)
        alpha_left = sum(40 - status(client, j, **alpha)["completed_count"] for j in alpha_jobs)
        beta_left = 300 - status(client, beta_job, **beta)["completed_count"]
    share = Counter("beta" if "beta0-" in r["text"] else "alpha" for r in calls[:window])
    per_alpha_job = Counter(r["text"].split("-")[0] for r in calls[:window] if "alpha" in r["text"])
    print(f"calls in the window: {dict(share)}; alpha by job: {sorted(per_alpha_job.values())}")
    assert alpha_left > 0 and beta_left > 0  # both still had work: the window is fair play
    assert sum(share.values()) == window
    # Within 20% of equal shares (the scheduler alone gives exactly half each).
    assert abs(share["alpha"] - share["beta"]) <= 0.2 * window / 2, share


def _t(call: dict[str, Any]) -> float:
    return float(call["t"])


def test_a_high_priority_job_overtakes_a_normal_one(start: StartService) -> None:
    service = start(claude_requests_per_minute=RPM)
    with service.client() as client:
        refused = client.post(
            "/api/v1/batch", json={"records": [{"text": "Hello."}], "priority": "urgent"}
        )
        assert refused.status_code == 422 and "priority" in refused.json()["error"]["message"]
        assert client.get("/api/v1/batch/jobs").json()["count"] == 0  # nothing published
        normal = submit(client, texts("normal", 200))
        results_at_least(client, normal, 10)
        reply = client.post(
            "/api/v1/batch",
            json={"records": [{"text": t} for t in texts("high", 40)], "priority": "high"},
        )
        assert reply.status_code == 202, reply.text
        high = reply.json()["job_id"]
        final = wait_completed(client, high, timeout=90)
        normal_then = status(client, normal, params={"limit": "0"})
        normal_final = wait_completed(client, normal, timeout=120)
    assert_every_index_once(final, 40)
    assert_every_index_once(normal_final, 200)
    # Sent after the normal job, finished long before it: 4 slots in 5 while both wait.
    assert normal_then["status"] == "running", normal_then
    assert normal_then["completed_count"] <= 10 + 40, normal_then
    # The status says which priority each job runs with.
    assert (final["priority"], normal_final["priority"]) == ("high", "normal")
    print(f"high job done when the normal job had {normal_then['completed_count']} of 200")


BACKLOG = 20_000


def test_a_small_job_behind_a_20000_record_backlog_completes_within_seconds(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # The instant simulator and 1,200 requests a minute (20 calls a second): the backlog
    # alone takes over 16 minutes, ten times what one look-ahead (2,000 records) holds. The
    # big job's records go to the bulk record topic, the small job's to batch.records, and
    # the worker reads both: the small job is within reach at once, and gets half the calls.
    service = start(claude_requests_per_minute=1200)
    body = "\n".join(f'{{"text": "Backlog {i}: the export failed again."}}' for i in range(BACKLOG))
    with service.client() as client:
        reply = client.post(
            "/api/v1/batch", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert reply.status_code == 202, reply.text
        big = reply.json()["job_id"]
        results_at_least(client, big, 20)
        submitted = time.monotonic()
        small = submit(client, texts("small", 40))
        final = wait_completed(client, small, timeout=120)
        elapsed = time.monotonic() - submitted
        big_now = status(client, big, params={"limit": "0"})
    print(
        f"40-record job behind a {BACKLOG}-record backlog completed in {elapsed:.1f} s; "
        f"the big job had {big_now['completed_count']} outcomes by then"
    )
    assert_every_index_once(final, 40)
    # The backlog was there the whole time: far more of it unread than a look-ahead holds.
    assert big_now["status"] == "running"
    assert BACKLOG - big_now["completed_count"] > 5 * 2000, big_now["completed_count"]
    # In FIFO order it would wait for the whole backlog: over 16 minutes.
    assert elapsed < 15.0, elapsed
