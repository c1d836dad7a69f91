"""The batch lane end to end: the service on Apache Kafka, the provider's Message Batches API
served by the simulator (its processing time short), the real SDK between them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import orjson

from simulator.testing import SimulatorHandle
from stream_app.provider.pricing import price_for
from tests.conftest import StartService
from tests.support import status, wait_completed, wait_until

MODEL = "claude-sonnet-4-5"
LANE = {
    "claude_model": MODEL,
    "batch_lane_window_seconds": "2",
    "batch_lane_poll_seconds": "0.2",
}


def texts(count: int, tag: str = "") -> list[str]:
    return [
        f"Ticket {i}{tag}: the parcel came late and the box was damaged. Refund please."
        for i in range(count)
    ]


@contextmanager
def logs_on_failure(*services: Any) -> Iterator[None]:
    """The workers' logs in the failure report (the lane's decisions are logged)."""
    try:
        yield
    except BaseException:
        for service in services:
            lines = [
                line
                for line in service.logs().splitlines()
                if "uvicorn.access" not in line and ("lane" in line or "rror" in line)
            ]
            print("\n".join(lines[-80:]))
        raise


def submit_job(client: httpx.Client, lines: list[str], **options: Any) -> str:
    # Each record carries metadata of its own: outcomes keep it (`input_metadata`).
    body = {
        "records": [{"text": t, "metadata": {"line": i}} for i, t in enumerate(lines)],
        **options,
    }
    reply = client.post("/api/v1/batch", json=body)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def all_results(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    reply = client.get(f"/api/v1/batch/{job_id}/results.ndjson")
    assert reply.status_code == 200
    return [orjson.loads(line) for line in reply.content.splitlines() if line.strip()]


def live_cost_of(job: dict[str, Any]) -> Decimal:
    tokens = (
        job["input_tokens"],
        job["output_tokens"],
        job["cache_creation_input_tokens"],
        job["cache_read_input_tokens"],
    )
    return price_for(MODEL).cost(*tokens)


def test_a_batch_lane_job_ends_whole_at_half_the_live_price(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=1.5, batch_not_found_seconds=0.3)
    service = start(batch_lane_max_requests=100, **LANE)
    with service.client() as client:
        began = time.monotonic()
        job_id = submit_job(client, texts(300), lane="batch")
        with logs_on_failure(service):
            job = wait_completed(client, job_id, timeout=120)
        print(f"batch-lane job of 300: {time.monotonic() - began:.1f} s")
        results = all_results(client, job_id)
    assert job["lane"] == "batch" and job["lane_reason"] == "asked for the batch lane"
    assert sorted(r["index"] for r in results) == list(range(300))
    assert job["completed_count"] == 300 and job["failed_count"] == 0
    # Each record's own metadata is kept with its outcome, as on the live lane.
    assert all(r["input_metadata"] == {"line": r["index"]} for r in results)
    stats = simulator.stats()
    # No live call at all; provider batches of at most 100, every item paid once.
    assert stats["requests"] == []
    sizes = [b["requests"] for b in stats["batches"]]
    assert max(sizes) <= 100 and sum(sizes) == 300, sizes
    assert stats["batch_items_billed"] == 300
    assert job["input_tokens"] == stats["batch_input_tokens_billed"]
    assert job["output_tokens"] == stats["batch_output_tokens_billed"]
    live = live_cost_of(job)
    assert Decimal(job["estimated_cost_usd"]) == live / 2
    assert Decimal(job["saving_usd"]) == live / 2
    batches = job["provider_batches"]
    assert len(batches) == len(sizes)
    assert all(b["processing_status"] == "ended" for b in batches)
    assert sum(b["request_counts"]["succeeded"] for b in batches) == 300


def test_partial_results_arrive_as_each_provider_batch_ends(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # The provider processes one batch at a time here, so the four batches end 3 s apart
    # (created together they would end within one poll of each other).
    simulator.configure(batch_processing_seconds=3.0, batch_concurrency=1)
    service = start(batch_lane_max_requests=50, **LANE)
    partial: list[tuple[int, list[str]]] = []
    with service.client() as client:
        began = time.monotonic()
        job_id = submit_job(client, texts(200), lane="batch")
        first = last = None

        def probe() -> bool:
            nonlocal first, last
            job = status(client, job_id, params={"limit": "0"})
            done = job["completed_count"]
            states = [b["processing_status"] for b in job.get("provider_batches", [])]
            if 0 < done < 200 and "in_progress" in states:
                partial.append((done, states))
            if done and first is None:
                first = time.monotonic() - began
            if job["status"] == "completed":
                last = time.monotonic() - began
                return True
            return False

        wait_until(probe, timeout=120, interval=0.1, what="the job to complete")
    # Results of the batches that ended were there while others were still processing.
    assert partial, "no partial result was seen while a provider batch was in progress"
    assert first is not None and last is not None and first < last
    print(f"first partial result after {first:.1f} s, last after {last:.1f} s")
    stats = simulator.stats()
    assert max(b["requests"] for b in stats["batches"]) <= 50
    assert stats["batch_items_billed"] == 200


def test_a_sigkill_right_after_create_leaves_exactly_one_paid_batch(
    start: StartService, simulator: SimulatorHandle, tmp_path: Any
) -> None:
    # The simulator accepts the create at once and answers it 8 s later: the worker is
    # killed in between, so it never learns the batch's id.
    simulator.configure(batch_processing_seconds=1.0, batch_create_delay_ms=8000)
    workdir = tmp_path / "worker"
    options = {"batch_lane_max_requests": 100, **LANE, "batch_lane_window_seconds": "3"}
    first = start(workdir=workdir, **options)
    with first.client() as client:
        job_id = submit_job(client, texts(40), lane="batch")
    with logs_on_failure(first):
        wait_until(
            lambda: simulator.stats()["batches_created"] >= 1,
            timeout=90,
            interval=0.05,
            what="the provider batch to be created",
        )
    first.stop(signal.SIGKILL)
    simulator.configure(batch_create_delay_ms=0)
    second = start(workdir=workdir, **options)
    with second.client() as client, logs_on_failure(first, second):
        job = wait_completed(client, job_id, timeout=120)
        results = all_results(client, job_id)
    assert sorted(r["index"] for r in results) == list(range(40))
    assert job["completed_count"] == 40
    stats = simulator.stats()
    live_batches = [b for b in stats["batches"] if not b["canceled"]]
    # Every record was in exactly one paid batch: nothing created twice.
    assert sum(b["requests"] for b in live_batches) == 40, stats["batches"]
    assert stats["batch_items_billed"] == 40
    assert job["input_tokens"] == stats["batch_input_tokens_billed"]
    print(f"batches created through the crash: {stats['batches_created']}")


def test_expired_and_errored_items_finish_by_the_live_rules(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=1.0)
    service = start(batch_lane_max_requests=100, batch_record_retry_count=1, **LANE)
    lines = texts(6) + [
        "Always expired in a batch [[sim:batch-expired]]",
        "Refused [[sim:fail-400]]",
        "Provider trouble once [[sim:overloaded-once]]",
        "Bad output once [[sim:bad-json-once]]",
    ]
    with service.client() as client:
        job_id = submit_job(client, lines, lane="batch")
        with logs_on_failure(service):
            job = wait_completed(client, job_id, timeout=120)
        results = {r["index"]: r for r in all_results(client, job_id)}
    assert sorted(results) == list(range(10))
    assert (job["completed_count"], job["failed_count"]) == (9, 1)
    refused = results[7]
    assert not refused["success"] and "fail-400" in refused["error"]
    # Expired in two batches, then answered on the live lane.
    live_texts = [r["text"] for r in simulator.stats()["requests"] if r["status"] == 200]
    assert any("batch-expired" in t for t in live_texts) and len(live_texts) == 1
    assert results[6]["success"]
    # The bad answer was paid for and retried: its tokens are in the record's.
    retried = results[9]
    assert retried["success"] and retried["response"]["metadata"]["attempts"] == 2


def test_a_retry_of_a_batch_lane_job_sends_its_failed_records_again(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """A batch-lane outcome says where its record sits on batch.records, so POST .../retry
    reads it back and runs it again (in a later provider batch), counted once."""
    simulator.configure(batch_processing_seconds=1.0)
    service = start(batch_lane_max_requests=100, **LANE)
    lines = texts(5) + [f"Refused every time {i} [[sim:fail-400]]" for i in range(3)]
    with service.client() as client:
        job_id = submit_job(client, lines, lane="batch")
        with logs_on_failure(service):
            before = wait_completed(client, job_id, timeout=120)
        assert (before["completed_count"], before["failed_count"]) == (5, 3)
        batches_before = len(simulator.stats()["batches"])
        reply = client.post(f"/api/v1/batch/{job_id}/retry", json={"failed": True})
        assert reply.status_code == 202, reply.text
        assert reply.json()["retry"] == 1 and reply.json()["records"] == 3
        with logs_on_failure(service):
            wait_until(
                lambda: (
                    status(client, job_id, params={"limit": "0"})["retries"] == 1
                    and status(client, job_id, params={"limit": "0"})["status"] == "completed"
                ),
                timeout=120,
                what="the retry round to end",
            )
        after = status(client, job_id, params={"limit": "0"})
        results = {r["index"]: r for r in all_results(client, job_id)}
    assert sorted(results) == list(range(8))
    assert (after["completed_count"], after["failed_count"]) == (5, 3)
    assert all(not results[i]["success"] and "fail-400" in results[i]["error"] for i in (5, 6, 7))
    assert all(results[i]["input_metadata"] == {"line": i} for i in range(8))
    # Sent again together in one provider batch of their own: three requests more.
    stats = simulator.stats()
    assert [b["requests"] for b in stats["batches"][batches_before:]] == [3]


def test_auto_picks_the_lane_by_size_and_deadline(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(
        claude_requests_per_minute=60, batch_lane_auto_minutes=1, batch_default_lane="auto"
    )

    def lane_of(client: httpx.Client, job_id: str) -> tuple[str, str]:
        job = status(client, job_id, params={"limit": "0"})
        return job["lane"], job["lane_reason"]

    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 3600))
    with service.client() as client:
        small = submit_job(client, texts(30, " small"))
        big = submit_job(client, texts(100, " big"))
        assert lane_of(client, small)[0] == "live"
        lane, reason = lane_of(client, big)
        assert lane == "batch" and "exceeds BATCH_LANE_AUTO_MINUTES (1 min)" in reason
        assert lane_of(client, submit_job(client, texts(5, " far"), deadline=later))[0] == "batch"
        assert lane_of(client, submit_job(client, texts(5, " near"), deadline=soon))[0] == "live"
        # The NDJSON job line and the query carry the lane too.
        ndjson = b'{"job": {"lane": "batch"}}\n{"text": "One."}\n'
        reply = client.post(
            "/api/v1/batch", content=ndjson, headers={"content-type": "application/x-ndjson"}
        )
        assert reply.status_code == 202, reply.text
        assert lane_of(client, reply.json()["job_id"])[0] == "batch"
        reply = client.post(
            "/api/v1/batch?lane=live",
            content=b'{"text": "One."}\n',
            headers={"content-type": "application/x-ndjson"},
        )
        assert lane_of(client, reply.json()["job_id"]) == ("live", "asked for the live lane")
        for bad in ({"lane": "cheap"}, {"deadline": "tomorrow"}):
            refused = client.post("/api/v1/batch", json={"records": [{"text": "a"}], **bad})
            assert refused.status_code == 422
            assert refused.json()["error"]["code"] == "validation_error"


def test_a_cancel_cancels_the_provider_batches(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=30.0)
    service = start(batch_lane_max_requests=100, **LANE)
    with service.client() as client:
        job_id = submit_job(client, texts(50), lane="batch")
        wait_until(
            lambda: (
                len(status(client, job_id, params={"limit": "0"}).get("provider_batches") or []) > 0
            ),
            timeout=60,
            interval=0.1,
            what="a provider batch",
        )
        assert client.post(f"/api/v1/batch/{job_id}/cancel").status_code in (200, 202)

        def finished() -> dict[str, Any] | None:
            job = status(client, job_id, params={"limit": "0"})
            return job if job["completed_count"] + job["skipped_count"] == 50 else None

        job = wait_until(finished, timeout=60, interval=0.1, what="every record's outcome")
    assert job["status"] == "cancelled" and job["skipped_count"] > 0
    stats = simulator.stats()
    assert stats["batches"] and all(b["canceled"] for b in stats["batches"])
    # Requests answered before the cancel are recorded and paid; the rest skipped.
    assert stats["batch_items_billed"] == job["completed_count"]


def capped_batch_job(
    service: Any, tag: str, *, timeout: float, interval: float
) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """A 40-record batch-lane job capped at about 15 records' worth (batch rates), followed
    until every record has an outcome: (the cap in USD, the job's status, its results)."""
    lines = texts(40, tag)
    with service.client() as client:
        reply = client.post(
            "/api/v1/batch/estimate",
            json={"records": [{"text": t} for t in lines], "lane": "batch"},
        )
        assert reply.status_code == 200, reply.text
        cap = round(reply.json()["cost_usd"] * 15 / 40, 6)
        job_id = submit_job(client, lines, lane="batch", max_cost_usd=cap)

        def over() -> dict[str, Any] | None:
            job = status(client, job_id)
            done = job["completed_count"] + job["failed_count"] + job["skipped_count"]
            return job if done == 40 else None

        with logs_on_failure(service):
            job = wait_until(
                over, timeout=timeout, interval=interval, what="every record's outcome"
            )
        return cap, job, all_results(client, job_id)


def largest_call_at_batch_rates(results: list[dict[str, Any]]) -> Decimal:
    """What the dearest answered record cost at the batch rates, USD (0 without one)."""
    half = price_for(MODEL).at_batch_rates()
    return max(
        (
            half.cost(
                r["response"]["metadata"]["input_tokens"],
                r["response"]["metadata"]["output_tokens"],
                r["response"]["metadata"]["cache_creation_input_tokens"],
                r["response"]["metadata"]["cache_read_input_tokens"],
            )
            for r in results
            if r["success"]
        ),
        default=Decimal(0),
    )


def test_the_spending_cap_holds_on_the_batch_lane(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(batch_processing_seconds=0.5)
    service = start(batch_lane_max_requests=100, claude_max_tokens=300, **LANE)
    cap, job, results = capped_batch_job(service, " capped", timeout=120, interval=0.2)
    stats = simulator.stats()
    spent = Decimal(job["estimated_cost_usd"])
    items = [b["requests"] for b in stats["batches"]]
    print(f"cap ${cap}: spent ${spent} in batches of {items}; {job['skipped_count']} skipped")
    assert job["status"] == "budget_exhausted", job["status"]
    assert sorted(r["index"] for r in results) == list(range(40))
    assert job["completed_count"] > 0 and job["skipped_count"] > 0 and job["failed_count"] == 0
    assert all(r["skip_reason"] == "budget_exhausted" for r in results if r.get("skipped"))
    # Skipped records were never sent: every item of every batch was answered and paid.
    assert sum(items) == stats["batch_items_billed"] == job["completed_count"]
    assert stats["requests"] == []
    # The cap made the batches smaller than BATCH_LANE_MAX_REQUESTS (all 40 would fit).
    assert max(items) < 40
    # Reserved before each create at what a request can cost at most: the spend stays
    # under the cap (the ledger's rule allows one request past it by its estimate's error).
    assert spent <= Decimal(str(cap)) + largest_call_at_batch_rates(results)
    assert spent == Decimal(job["saving_usd"])  # half price


def test_the_cap_holds_while_provider_batches_outlive_the_reservation_ttl(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """Each provider batch runs three times the reservations' TTL (as an hour-long batch
    does with the 15-minute default): the lane renews its batches' reservations, so the
    records left waiting are not admitted when the TTL passes, and the spend stays under
    the cap."""
    simulator.configure(batch_processing_seconds=6.0)
    service = start(
        batch_lane_max_requests=100,
        claude_max_tokens=300,
        batch_spend_reservation_ttl_seconds="2",
        **LANE,
    )
    cap, job, results = capped_batch_job(service, " renewed", timeout=300, interval=0.5)
    stats = simulator.stats()
    spent = Decimal(job["estimated_cost_usd"])
    items = [b["requests"] for b in stats["batches"]]
    print(f"cap ${cap}: spent ${spent} in batches of {items}; {job['skipped_count']} skipped")
    assert job["status"] == "budget_exhausted", job["status"]
    assert sorted(r["index"] for r in results) == list(range(40))
    assert job["completed_count"] > 0 and job["skipped_count"] > 0 and job["failed_count"] == 0
    assert sum(items) == stats["batch_items_billed"] == job["completed_count"]
    assert spent <= Decimal(str(cap)) + largest_call_at_batch_rates(results)


def test_a_provider_batch_that_never_ends_is_given_up_past_its_expiry(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # The provider ends every batch by its expiry; here its batches stay in progress past
    # it (a fault), until the lane gives each up BATCH_LANE_GIVE_UP_SECONDS later.
    simulator.configure(
        batch_processing_seconds=1.0,
        batch_stall=True,
        batch_stall_past_expiry=True,
        batch_expiry_seconds=2.0,
    )
    service = start(batch_lane_max_requests=100, batch_lane_give_up_seconds=1, **LANE)
    lines = texts(20, " stuck")
    with service.client() as client:
        job_id = submit_job(client, lines, lane="batch")
        with logs_on_failure(service):
            job = wait_completed(client, job_id, timeout=180)
        results = all_results(client, job_id)
    assert sorted(r["index"] for r in results) == list(range(20))
    assert job["completed_count"] == 20 and job["failed_count"] == 0
    stats = simulator.stats()
    # Given up twice (a later batch, then the live lane), nothing paid in a batch.
    assert len(stats["batches"]) == 2 and all(b["canceled"] for b in stats["batches"])
    assert [b["requests"] for b in stats["batches"]] == [20, 20]
    assert stats["batch_items_billed"] == 0
    live = sorted(r["text"] for r in stats["requests"] if r["status"] == 200)
    assert live == sorted(lines)  # each record answered once, on the live lane


def test_the_live_lane_keeps_its_budget_while_a_batch_lane_job_runs(
    start: StartService, simulator: SimulatorHandle
) -> None:
    rpm, window = 240, 25.0
    # Provider batches of 500 processed one at a time, 10 s each: the batch job runs
    # throughout the second window, and its batches' results come in it.
    simulator.configure(latency_ms=100, batch_processing_seconds=10.0, batch_concurrency=1)
    service = start(claude_requests_per_minute=rpm, batch_lane_max_requests=500, **LANE)

    def use_in(opened: float) -> tuple[float, list[int]]:
        """The live lane's calls in [opened, opened + window) against its budget."""
        calls = [
            r
            for r in simulator.stats()["requests"]
            if r["status"] == 200 and opened <= r["t"] < opened + window
        ]
        assert all(" live:" in r["text"] for r in calls)
        buckets = [0] * int(window // 5)
        for r in calls:
            buckets[min(len(buckets) - 1, int((r["t"] - opened) // 5))] += 1
        return len(calls) / (rpm * window / 60), buckets

    with service.client() as client, logs_on_failure(service):
        live_job = submit_job(client, texts(800, " live"), lane="live")
        wait_until(
            lambda: status(client, live_job, params={"limit": "0"})["completed_count"] >= 20,
            timeout=60,
            interval=0.2,
            what="the live lane at pace",
        )
        # The live lane alone, then with a batch-lane job beside it: the same machine,
        # minutes apart (a loaded machine slows both alike).
        alone_at = time.time()
        wait_until(lambda: time.time() >= alone_at + window, timeout=window + 5, interval=0.5)
        began = time.time()
        batch_job = submit_job(client, texts(3000, " batch"), lane="batch")
        sizes: list[int] = []

        def handed_over() -> bool:
            sizes[:] = [b["requests"] for b in simulator.stats()["batches"]]
            return sum(sizes) == 3000

        # The batch lane is not held to the live lane's pace: every record of the batch
        # job reaches a provider batch (full ones: none cut by age).
        wait_until(handed_over, timeout=90, interval=0.2, what="the batch job in batches")
        reached = time.time() - began
        assert set(sizes) == {500}, sizes
        together_at = time.time()
        wait_until(lambda: time.time() >= together_at + window, timeout=window + 5, interval=0.5)
        batch_now = status(client, batch_job, params={"limit": "0"})
        live_now = status(client, live_job, params={"limit": "0"})
        client.post(f"/api/v1/batch/{batch_job}/cancel")
        client.post(f"/api/v1/batch/{live_job}/cancel")
    alone, alone_buckets = use_in(alone_at)
    together, buckets = use_in(together_at)
    print(
        f"live lane at {rpm} requests/minute: alone {alone:.3f} (per 5 s: {alone_buckets}), "
        f"beside the batch job {together:.3f} (per 5 s: {buckets}); the batch job's 3,000 "
        f"records in provider batches {reached:.1f} s after its submit, "
        f"{batch_now['completed_count']} results by the window's end"
    )
    # Both lanes were busy throughout the second window, batch results coming in it.
    assert live_now["status"] == "running" and batch_now["status"] == "running"
    assert 0 < batch_now["completed_count"] < 3000
    # The batch lane takes nothing from the live lane's budget: within 5 % of the live
    # lane alone, which reaches its budget (>= 0.95) on a machine with a core to spare.
    assert together >= 0.95 * alone, (together, alone)
    assert together >= 0.95, (together, buckets)


def test_a_deadline_moves_the_records_of_a_slow_provider_batch_to_the_live_lane(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # The provider batch would take 100 s; the job must be done in 25 s. At 6,000
    # requests/minute the live lane needs under a second for its 40 records: the batch is
    # kept until about 6 s before the deadline, then cancelled; what it answered by then
    # is kept (and paid once), the rest goes live.
    simulator.configure(batch_processing_seconds=100.0)
    service = start(batch_lane_max_requests=100, **LANE)
    lines = texts(40, " due")
    deadline = time.time() + 25
    with service.client() as client:
        job_id = submit_job(
            client,
            lines,
            lane="batch",
            deadline=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline)),
        )
        with logs_on_failure(service):
            job = wait_completed(client, job_id, timeout=90)
        done_at = time.time()
        results = all_results(client, job_id)
    stats = simulator.stats()
    answered = stats["batch_items_billed"]
    live = [r["text"] for r in stats["requests"] if r["status"] == 200]
    print(
        f"deadline in 25 s: {answered} records answered in the provider batch before it was "
        f"cancelled, {len(live)} on the live lane; done {deadline - done_at:.1f} s early"
    )
    assert sorted(r["index"] for r in results) == list(range(40))
    assert job["completed_count"] == 40 and job["failed_count"] == 0
    assert [b["canceled"] for b in stats["batches"]] == [True]
    # Every record answered once: in the batch before its cancel, or live after it.
    assert answered > 0 and len(live) == len(set(live)) == 40 - answered
    # The status says how many records went live, and why the batch was cancelled.
    assert job["moved_to_live_lane"] == 40 - answered
    (batch,) = job["provider_batches"]
    assert batch["processing_status"] == "ended" and "deadline" in batch["note"]
    assert job["input_tokens"] == stats["batch_input_tokens_billed"] + sum(
        r["input_tokens"] for r in stats["requests"] if r["status"] == 200
    )
    assert done_at <= deadline + 1.0  # (the deadline is given to the second)


def stopped_mid_batch(
    start: StartService, simulator: SimulatorHandle, workdir: Any, count: int, options: Any
) -> tuple[str, Any]:
    """A batch-lane job of `count` records whose provider batches (slow: 120 s) all exist,
    then a SIGTERM of its worker and a simulator that forgets them, as the simulator child
    of `make run` does when it restarts: (the job's id, the stopped worker)."""
    simulator.configure(batch_processing_seconds=120.0)
    first = start(workdir=workdir, **options)
    with first.client() as client:
        job_id = submit_job(client, texts(count), lane="batch")
        wait_until(
            lambda: sum(b["requests"] for b in simulator.stats()["batches"]) == count,
            timeout=60,
            interval=0.1,
            what="the job's provider batches",
        )
    assert first.stop(signal.SIGTERM) == 0
    simulator.reset()
    return job_id, first


def test_after_a_restart_that_lost_the_provider_batch_the_status_shows_every_batch_ended(
    start: StartService, simulator: SimulatorHandle, tmp_path: Any
) -> None:
    # As with `make run`: the worker stops mid-batch and its simulator child, restarted with
    # it, has forgotten the batch (a 404 for its id). The records go again in a new batch;
    # once the job has ended, no provider batch of it may still read `in_progress`.
    options = {"batch_lane_max_requests": 10, **LANE}
    job_id, first = stopped_mid_batch(start, simulator, tmp_path / "worker", 21, options)
    simulator.configure(batch_processing_seconds=1.0)
    second = start(workdir=tmp_path / "worker", **options)
    with second.client() as client, logs_on_failure(first, second):
        job = wait_completed(client, job_id, timeout=120)
        results = all_results(client, job_id)
        shown = status(client, job_id, params={"limit": "0"})
    assert sorted(r["index"] for r in results) == list(range(21))
    assert job["completed_count"] == 21
    # The lost batches' records went again as full batches, not one by one.
    assert sorted(b["requests"] for b in simulator.stats()["batches"]) == [1, 10, 10]
    batches = shown.get("provider_batches") or []
    assert batches, shown
    assert all(b["processing_status"] == "ended" for b in batches), batches
    # The lost batches' requests were never answered: none is counted as processing.
    assert all(b["request_counts"].get("processing", 0) == 0 for b in batches), batches
    assert simulator.stats()["batch_items_billed"] == 21


def test_a_cancel_right_after_a_restart_that_lost_the_provider_batch_ends_every_record(
    start: StartService, simulator: SimulatorHandle, tmp_path: Any
) -> None:
    # The worker stops mid-batch, its provider batch is forgotten (as the simulator child
    # of `make run` forgets it), and the job is cancelled as soon as the worker is back:
    # every record still ends (skipped, or answered), none is left without an outcome.
    options = {"batch_lane_max_requests": 1000, **LANE}
    job_id, first = stopped_mid_batch(start, simulator, tmp_path / "worker", 200, options)
    second = start(workdir=tmp_path / "worker", **options)
    with second.client() as client, logs_on_failure(first, second):
        assert client.post(f"/api/v1/batch/{job_id}/cancel").status_code in (200, 202)

        def ended() -> dict[str, Any] | None:
            job = status(client, job_id, params={"limit": "0"})
            done = job["completed_count"] + job["failed_count"] + job["skipped_count"]
            return job if done == 200 else None

        job = wait_until(ended, timeout=120, interval=0.2, what="every record's outcome")
        results = all_results(client, job_id)
    assert job["status"] == "cancelled"
    assert sorted(r["index"] for r in results) == list(range(200))
    assert simulator.stats()["batch_items_billed"] == job["completed_count"]
