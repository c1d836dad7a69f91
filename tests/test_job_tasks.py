"""Each job asks its own question, on the real broker: a task per job (instructions, output
schema, model), the estimate before running, and the spending cap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from simulator.testing import SimulatorHandle
from stream_app.provider.pricing import price_for
from tests.conftest import StartService
from tests.support import status, wait_until

PRICE = price_for("claude-sonnet-5-5")

TRIAGE = {
    "instructions": "Triage the support ticket: product area, urgency, refund requested.",
    "output_schema": {
        "type": "object",
        "properties": {
            "product_area": {"type": "string"},
            "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
            "refund_requested": {"type": "boolean"},
        },
        "required": ["product_area", "urgency", "refund_requested"],
        "additionalProperties": False,
    },
}
REVIEW = {
    "instructions": "Read the product review: its star rating and the features it asks for.",
    "output_schema": {
        "type": "object",
        "properties": {
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "feature_requests": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["rating", "feature_requests"],
        "additionalProperties": False,
    },
}
TICKETS = [
    f"Ticket {i}: the export button crashes the app when I download invoices. "
    f"I want a refund for month {i % 12 + 1}. Urgent, our finance team is blocked."
    for i in range(12)
]


def results_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return status(client, job_id)["results"]


def wait_over(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """The job's status once every record has its outcome."""

    def over() -> dict[str, Any] | None:
        reply = client.get(f"/api/v1/batch/{job_id}/status")
        if reply.status_code == 404:  # not visible yet on a loaded machine (checked below)
            return None
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        done = body["completed_count"] + body["failed_count"] + body["skipped_count"]
        return body if body["total_records"] is not None and done == body["total_records"] else None

    return wait_until(over, timeout=timeout, interval=0.1, what=f"job {job_id} to end")


def fields(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result["response"].items() if k != "metadata"}


def submit(client: httpx.Client, texts: list[str], **options: Any) -> str:
    body = {"records": [{"text": t} for t in texts], **options}
    reply = client.post("/api/v1/batch", json=body)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def test_two_jobs_with_their_own_tasks_at_once(start: StartService) -> None:
    service = start()
    with service.client() as client:
        triage = submit(client, TICKETS, task=TRIAGE)
        reviews = submit(
            client,
            [f"Review {i}: love it, but please add dark mode and CSV export." for i in range(12)],
            task=REVIEW,
        )
        plain = submit(client, TICKETS[:3])
        for job_id, task in ((triage, TRIAGE), (reviews, REVIEW)):
            body = wait_over(client, job_id)
            assert body["status"] == "completed" and body["completed_count"] == 12, body
            assert body["task"] == "custom"
            assert sorted(r["index"] for r in body["results"]) == list(range(12))
            other = REVIEW if task is TRIAGE else TRIAGE
            for result in body["results"]:
                jsonschema.validate(fields(result), task["output_schema"])
                with pytest.raises(jsonschema.ValidationError):
                    jsonschema.validate(fields(result), other["output_schema"])
                assert result["response"]["metadata"]["model"] == "claude-sonnet-5-5"
        # The default task is unchanged for a job that names none.
        body = wait_over(client, plain)
        assert set(fields(body["results"][0])) == {"summary", "insights", "sentiment", "topics"}
        # A preset by name.
        preset = submit(client, TICKETS[:2], task="support-ticket-triage")
        body = wait_over(client, preset)
        assert body["task"] == "support-ticket-triage"
        assert {"urgency", "refund_requested"} <= set(fields(body["results"][0]))


@pytest.mark.parametrize(
    ("task", "code", "named"),
    [
        (
            {
                "instructions": "x",
                "output_schema": {
                    "type": "object",
                    "properties": {"a": {"type": "string", "patternProperties": {}}},
                },
            },
            "unsupported_schema",
            "patternProperties",
        ),
        (
            {"instructions": "x", "output_schema": {"type": "array", "items": {"type": "string"}}},
            "unsupported_schema",
            "type",
        ),
        ("no-such-preset", "unknown_task", "no-such-preset"),
    ],
)
def test_an_unsupported_task_is_refused_before_anything_is_produced(
    start: StartService, simulator: SimulatorHandle, task: Any, code: str, named: str
) -> None:
    service = start()
    with service.client() as client:
        before = client.get("/api/v1/batch/jobs").json()["count"]
        reply = client.post("/api/v1/batch", json={"records": [{"text": "Hi."}], "task": task})
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error["code"] == code and named in error["message"], error
        # The same as the first line of a stream, and for the estimate.
        lines = [json.dumps({"job": {"task": task}}), json.dumps({"text": "Hi."})]
        streamed = client.post(
            "/api/v1/batch",
            content="\n".join(lines),
            headers={"content-type": "application/x-ndjson"},
        )
        assert streamed.status_code == 422 and streamed.json()["error"]["code"] == code
        assert "line 1" in streamed.json()["error"]["message"]
        estimate = client.post(
            "/api/v1/batch/estimate", json={"records": [{"text": "Hi."}], "task": task}
        )
        assert estimate.status_code == 422 and estimate.json()["error"]["code"] == code
        # A good job afterwards is the only one there is.
        good = submit(client, ["Fine. Thanks."])
        wait_over(client, good)
        assert client.get("/api/v1/batch/jobs").json()["count"] == before + 1
    assert len(simulator.stats()["requests"]) == 1


def prompt_tokens(body: dict[str, Any]) -> int:
    return int(
        body["input_tokens"] + body["cache_creation_input_tokens"] + body["cache_read_input_tokens"]
    )


def billed_cost(requests: list[dict[str, Any]]) -> Decimal:
    return sum(
        (
            PRICE.cost(
                r["input_tokens"],
                r["output_tokens"],
                r["cache_creation_input_tokens"],
                r["cache_read_input_tokens"],
            )
            for r in requests
        ),
        Decimal(0),
    )


def test_the_estimate_is_close_to_what_the_run_billed(
    start: StartService, simulator: SimulatorHandle
) -> None:
    # Instructions long enough to be cached (over 1,024 tokens with the schema).
    long_task = {**TRIAGE, "instructions": TRIAGE["instructions"] + " Be careful." * 450}
    # Calls overlap as with the real provider, so the first wave writes the cache.
    simulator.configure(latency_ms=200)
    service = start()
    texts = TICKETS * 5
    figures = []
    with service.client() as client:
        for round_ in ("cold", "warm"):
            body = {"records": [{"text": t} for t in texts], "task": long_task}
            estimate = client.post("/api/v1/batch/estimate", json=body)
            assert estimate.status_code == 200, estimate.text
            est = estimate.json()
            assert est["records"] == len(texts)
            before = len(simulator.stats()["requests"])
            assert before == (0 if round_ == "cold" else len(texts))  # no call to estimate
            job_id = submit(client, texts, task=long_task)
            done = wait_over(client, job_id)
            assert done["completed_count"] == len(texts)
            billed = Decimal(str(done["estimated_cost_usd"]))
            assert billed == billed_cost(simulator.stats()["requests"][before:])
            assert done["cache_read_input_tokens"] > 0
            # The first wave writes the prefix; a job right after the first finds it cached.
            assert (done["cache_creation_input_tokens"] > 0) is (round_ == "cold")
            ratio = float(Decimal(str(est["cost_usd"])) / billed)
            figures.append((round_, est["cost_usd"], float(billed), ratio, est["output_basis"]))
            print(
                f"{round_}: estimated ${est['cost_usd']:.6f} "
                f"(without caching ${est['cost_usd_without_caching']:.6f}, "
                f"output from {est['output_basis']}), billed ${billed:.6f}, "
                f"ratio {ratio:.3f}; tokens est in/out {est['input_tokens']}/"
                f"{est['output_tokens']}, billed in/out "
                f"{prompt_tokens(done)}/{done['output_tokens']}; cache writes est/billed "
                f"{est['cache_creation_input_tokens']}/{done['cache_creation_input_tokens']}"
            )
            assert 0.85 <= ratio <= 1.15, figures


def test_a_capped_job_stops_at_its_cap(start: StartService, simulator: SimulatorHandle) -> None:
    simulator.configure(latency_ms=150)
    service = start(batch_max_concurrent_llm_calls=3)
    texts = [f"Capped {i}: {t}" for i, t in enumerate(TICKETS * 4)]
    with service.client() as client:
        # About twelve calls' worth (a call of these costs ~ $0.0013).
        cap = 0.016
        job_id = submit(client, texts, task=TRIAGE, max_cost_usd=cap)
        body = wait_over(client, job_id)
    requests = [r for r in simulator.stats()["requests"] if r["status"] == 200]
    spent = Decimal(str(body["estimated_cost_usd"]))
    per_call = [billed_cost([r]) for r in requests]
    largest = max(per_call)
    print(
        f"cap ${cap}: spent ${spent:.6f} in {len(requests)} calls "
        f"({float(spent) / cap:.1%} of the cap, largest call ${largest:.6f}); "
        f"{body['skipped_count']} of {len(texts)} records skipped"
    )
    assert body["status"] == "budget_exhausted", body
    assert body["max_cost_usd"] == cap
    assert spent == billed_cost(requests)
    assert body["completed_count"] == len(requests) and body["failed_count"] == 0
    assert body["skipped_count"] == len(texts) - len(requests) > 0
    skipped = [r for r in body["results"] if r.get("skipped")]
    assert all(r["skip_reason"] == "budget_exhausted" for r in skipped)
    # Within one call of the cap, on either side.
    assert Decimal(str(cap)) - largest <= spent <= Decimal(str(cap)) + largest
    # No call started after the spend reached the cap (from the simulator's own log).
    running = Decimal(0)
    reached_at = None
    for r in sorted(requests, key=lambda r: r["t_done"]):
        running += billed_cost([r])
        if running >= Decimal(str(cap)) and reached_at is None:
            reached_at = r["t_done"]
    if reached_at is not None:
        assert all(r["t"] <= reached_at for r in requests)


def test_the_cli_estimates_asks_and_submits_with_a_task(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    from tests.cli.test_cli import insight

    service = start()
    url = service.base_url
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TICKETS[:4]))
    task_file = tmp_path / "triage.json"
    task_file.write_text(json.dumps(TRIAGE))

    est = insight("estimate", str(data), "--task", str(task_file), "--json", url=url)
    assert est.returncode == 0, est.stderr
    body = json.loads(est.stdout)
    assert body["records"] == 4 and body["task"] == "custom" and body["cost_usd"] > 0
    assert simulator.stats()["requests"] == []  # estimating calls no model

    # Above the confirmation threshold, without a terminal and without --yes: refused.
    refused = insight("submit", str(data), "--confirm-above", "0", url=url)
    assert refused.returncode == 1
    assert "pass --yes to submit" in refused.stderr
    assert simulator.stats()["requests"] == []

    ok = insight(
        "submit",
        str(data),
        "--task",
        "support-ticket-triage",
        "--max-cost",
        "5",
        "--priority",
        "high",
        "--yes",
        url=url,
    )
    assert ok.returncode == 0, ok.stderr
    assert "estimate: 4 records" in ok.stderr
    assert "4 succeeded, 0 failed, 0 skipped of 4" in ok.stdout
    submitted = re.search(r"job ([0-9a-f]{32})", ok.stdout)
    assert submitted is not None, ok.stdout
    with httpx.Client(base_url=url, timeout=10) as client:
        body = client.get(f"/api/v1/batch/{submitted[1]}/status", params={"limit": "0"}).json()
    assert (body["task"], body["max_cost_usd"], body["priority"]) == (
        "support-ticket-triage",
        5.0,
        "high",
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instructions": "x", "output_schema": {"type": "string"}}))
    refused = insight("submit", str(data), "--task", str(bad), url=url)
    assert refused.returncode == 1 and "unsupported_schema" in refused.stderr


def _two_workers(start: StartService, **env: object) -> tuple[Any, Any]:
    first = start(**env)
    second = start(workdir=first.log_path.parent.parent / "svc2", **env)

    def shared() -> bool:
        try:
            owned = [
                httpx.get(f"{w.base_url}/api/v1/ready", timeout=10).json() for w in (first, second)
            ]
        except httpx.HTTPError:  # a worker too busy to answer (a loaded machine): not yet
            return False
        parts = [set(o["partitions"]) for o in owned]
        return all(o["ready"] for o in owned) and parts[0] | parts[1] == {0, 1, 2, 3} and all(parts)

    wait_until(shared, timeout=180, interval=0.5, what="the two workers to share the partitions")
    return first, second


def test_the_cap_holds_across_two_workers(start: StartService, simulator: SimulatorHandle) -> None:
    """Records of one job run on both workers, 10 calls at a time each; every call is
    reserved in the job's ledger on batch.spend, which both workers read in one order and
    judge alike: the bill passes the cap by at most one call."""
    simulator.configure(latency_ms=150)
    first, second = _two_workers(start, batch_max_concurrent_llm_calls=10)
    with first.client() as client:
        texts = [f"Shared {i}: {t}" for i, t in enumerate(TICKETS * 15)]
        cap = 0.04
        job_id = submit(client, texts, task=TRIAGE, max_cost_usd=cap)
        body = wait_over(client, job_id, timeout=300)
    second.ensure_alive()
    requests = [r for r in simulator.stats()["requests"] if r["status"] == 200]
    spent = Decimal(str(body["estimated_cost_usd"]))
    largest = max(billed_cost([r]) for r in requests)
    print(
        f"two workers x 10 calls, cap ${cap}: spent ${spent:.6f} in {len(requests)} calls "
        f"({float(spent) / cap:.1%} of the cap, largest call ${largest:.6f})"
    )
    billed = billed_cost(requests)
    print(f"billed by the provider ${billed:.6f} ({float(billed) / cap:.1%} of the cap)")
    assert body["status"] == "budget_exhausted" and body["skipped_count"] > 0
    # What the provider billed, every call (a record run twice around a rebalance too).
    assert billed <= Decimal(str(cap)) + largest
    assert spent <= billed


def test_a_tenant_budget_holds_across_two_workers_and_refuses_new_jobs(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """TENANT_BUDGETS=alpha:0.03: alpha's two jobs, run by two workers, stop as
    budget_exhausted within one call of the budget; alpha's next job is refused with 402;
    beta (no budget) is not affected. The spend shows in /metrics, the job list and the CLI."""
    simulator.configure(latency_ms=100)
    keys = "alpha:key-alpha,beta:key-beta"
    first, second = _two_workers(
        start, batch_max_concurrent_llm_calls=10, api_keys=keys, tenant_budgets="alpha:0.03"
    )
    alpha = {"Authorization": "Bearer key-alpha"}
    beta = {"Authorization": "Bearer key-beta"}
    texts = [f"Tenant {i}: {t}" for i, t in enumerate(TICKETS * 10)]
    with first.client() as client:
        client.headers.update(alpha)
        jobs = [submit(client, texts[:60], task=TRIAGE), submit(client, texts[60:], task=TRIAGE)]
        bodies = [wait_over(client, job, timeout=300) for job in jobs]
    requests = [r for r in simulator.stats()["requests"] if r["status"] == 200]
    spent = sum((Decimal(str(b["estimated_cost_usd"])) for b in bodies), Decimal(0))
    largest = max(billed_cost([r]) for r in requests)
    print(
        f"tenant budget $0.03: spent ${spent:.6f} ({float(spent) / 0.03:.1%}), "
        f"largest call ${largest:.6f}"
    )
    billed = billed_cost(requests)
    assert spent <= billed <= Decimal("0.03") + largest
    assert "budget_exhausted" in {b["status"] for b in bodies}
    skipped = [r for b in bodies for r in b["results"] if r.get("skipped")]
    assert skipped and all(r["skip_reason"] == "budget_exhausted" for r in skipped)
    assert "TENANT_BUDGETS" in skipped[0]["error"]

    def refused_everywhere() -> bool:
        answers = []
        for worker in (first, second):
            with worker.client() as client:
                reply = client.post(
                    "/api/v1/batch", json={"records": [{"text": "x"}]}, headers=alpha
                )
                answers.append(reply)
        return all(
            r.status_code == 402 and r.json()["error"]["code"] == "tenant_budget_exhausted"
            for r in answers
        )

    wait_until(refused_everywhere, timeout=30, interval=0.5, what="402 on both workers")
    with second.client() as client:
        reply = client.post("/api/v1/batch", json={"records": [{"text": "y"}]}, headers=beta)
        assert reply.status_code == 202, reply.text
        listed = client.get("/api/v1/batch/jobs", headers=alpha).json()
        metrics = client.get("/metrics").text
    assert listed["tenant_budget"]["tenant"] == "alpha"
    assert listed["tenant_budget"]["exhausted"] is True
    # The ledger's spend is what the calls billed (settled by the workers that made them).
    assert abs(Decimal(str(listed["tenant_budget"]["spent_usd"])) - billed) <= largest
    assert 'insight_tenant_budget_exhausted{tenant="alpha"} 1.0' in metrics
    assert 'insight_tenant_spent_usd{tenant="alpha"}' in metrics
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "insight"), "jobs"],
        env={**os.environ, "INSIGHT_URL": second.base_url, "INSIGHT_API_KEY": "key-alpha"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "budget of alpha for" in cli.stderr and "exhausted" in cli.stderr


def test_estimates_count_prompts_and_a_fresh_worker_knows_the_history(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """Cold, the prompt tokens are the provider's own count (token counting, no call billed)
    and the output comes from the schema; after the job, a worker started afresh (other
    state directory, same cluster) estimates the next job from the billed history it read
    from batch.results. Both within 15 % of the bill, and the bill inside the range."""
    first = start(workdir=tmp_path / "first")
    texts = [f"Ticket {i}: {t}" for i, t in enumerate(TICKETS * 3)]
    others = [f"Other {i}: {t} Thanks." for i, t in enumerate(reversed(TICKETS * 3))]
    body = {"records": [{"text": t} for t in texts], "task": TRIAGE}
    with first.client() as client:
        cold = client.post("/api/v1/batch/estimate", json=body).json()
        assert simulator.stats()["requests"] == []  # counting is not a billed call
        done = wait_over(client, submit(client, texts, task=TRIAGE))
    assert cold["input_basis"] == "counted" and cold["output_basis"] == "schema"
    assert cold["input_tokens"] == prompt_tokens(done)
    first.stop()
    second = start(workdir=tmp_path / "second")
    with second.client() as client:
        body = {"records": [{"text": t} for t in others], "task": TRIAGE}
        warm = client.post("/api/v1/batch/estimate", json=body).json()
        again = wait_over(client, submit(client, others, task=TRIAGE))
    assert warm["output_basis"] == f"history of {len(texts)}"
    for estimate, bill in ((cold, done), (warm, again)):
        billed = float(bill["estimated_cost_usd"])
        print(
            f"estimate ${estimate['cost_usd']:.6f} ({estimate['cost_usd_low']:.6f}-"
            f"{estimate['cost_usd_high']:.6f}), billed ${billed:.6f}"
        )
        assert abs(estimate["cost_usd"] - billed) <= 0.15 * billed
        assert estimate["cost_usd_low"] <= billed <= estimate["cost_usd_high"]
