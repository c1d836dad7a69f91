"""The estimate prices the lane the job would run in: `lane` in the body, the NDJSON job line
or the query; `auto` resolved as a submit of the same body is. The real service on the test
broker and the simulator."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx

from stream_app.provider.pricing import price_for
from tests.conftest import StartService
from tests.support import status

MODEL = "claude-sonnet-4-5"


def body(count: int, tag: str = "", **options: Any) -> dict[str, Any]:
    texts = [f"Ticket {i}{tag}: the invoice page is blank since Monday." for i in range(count)]
    return {"records": [{"text": t} for t in texts], **options}


def estimate(client: httpx.Client, sent: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/api/v1/batch/estimate", json=sent)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def at_batch_rates(est: dict[str, Any]) -> Decimal:
    """The estimate's token split priced at the Message Batches rates (cache writes to the
    1-hour cache), rounded as the answer is."""
    writes, reads = est["cache_creation_input_tokens"], est["cache_read_input_tokens"]
    cost = (
        price_for(est["model"])
        .at_batch_rates()
        .cost(est["input_tokens"] - writes - reads, est["output_tokens"], writes, reads, writes)
    )
    return round(cost, 6)


def test_the_estimate_prices_the_lane_a_submit_would_take(start: StartService) -> None:
    # 60 requests a minute and BATCH_LANE_AUTO_MINUTES=1: `auto` takes the batch lane above
    # 60 records.
    service = start(claude_model=MODEL, claude_requests_per_minute=60, batch_lane_auto_minutes=1)
    with service.client() as client:
        live = estimate(client, body(30, lane="live"))
        batch = estimate(client, body(30, lane="batch"))
        assert (live["lane"], live["lane_reason"]) == ("live", "asked for the live lane")
        assert (batch["lane"], batch["lane_reason"]) == ("batch", "asked for the batch lane")
        # Same tokens; the batch lane at the batch rates, the saving against live said.
        assert batch["input_tokens"] == live["input_tokens"] > 0
        assert batch["output_tokens"] == live["output_tokens"] > 0
        assert Decimal(str(batch["cost_usd"])) == at_batch_rates(batch)
        assert batch["live_cost_usd"] == live["cost_usd"] == live["live_cost_usd"]
        if batch["cache_creation_input_tokens"] == 0:
            assert abs(batch["cost_usd"] - live["cost_usd"] / 2) <= 2e-6
        assert batch["cost_usd"] < live["cost_usd"] * 0.6
        assert batch["saving_usd"] == round(live["cost_usd"] - batch["cost_usd"], 6)
        assert live["saving_usd"] == 0
        assert batch["duration_seconds"] == 3600.0 and live["duration_seconds"] < 3600.0

        # `auto`, by size: what the estimate priced is the lane the submit takes.
        for count, expected in ((30, "live"), (100, "batch")):
            tag = f" auto {count}"
            est = estimate(client, body(count, tag))
            assert est["lane"] == expected, est["lane_reason"]
            reply = client.post("/api/v1/batch", json=body(count, tag))
            assert reply.status_code == 202, reply.text
            job = status(client, reply.json()["job_id"], params={"limit": "0"})
            assert job["lane"] == est["lane"]
        assert "exceeds BATCH_LANE_AUTO_MINUTES (1 min)" in est["lane_reason"]

        # `auto` with a deadline far enough for a provider batch: the batch lane.
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 3600))
        assert estimate(client, body(5, " far", deadline=later))["lane"] == "batch"

        # The batch lane asked for with a deadline sooner than a provider batch takes: its
        # records are expected to move to the live lane, so it is priced live (the batch
        # price the low end), done by the deadline, and the reason says so.
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        close = estimate(client, body(10, " soon", lane="batch", deadline=soon))
        assert close["lane"] == "batch" and "move to the live lane" in close["lane_reason"]
        assert close["cost_usd"] == close["live_cost_usd"] and close["saving_usd"] == 0
        assert close["cost_usd_low"] < close["cost_usd"] * 0.6
        assert 100 <= close["duration_seconds"] <= 121

        # Options in the query apply to a JSON body as on a submit: a contradiction is a 422.
        reply = client.post("/api/v1/batch/estimate?lane=live", json=body(2, lane="batch"))
        assert reply.status_code == 422, reply.text
        assert "differs from the body" in reply.json()["error"]["message"]
        reply = client.post("/api/v1/batch/estimate?lane=batch", json=body(2, " q"))
        assert reply.status_code == 200 and reply.json()["lane"] == "batch", reply.text

        # The NDJSON job line and the query name the lane too.
        lines = b'{"job": {"lane": "batch"}}\n{"text": "One."}\n{"text": "Two."}\n'
        ndjson = {"content-type": "application/x-ndjson"}
        reply = client.post("/api/v1/batch/estimate", content=lines, headers=ndjson)
        assert reply.status_code == 200 and reply.json()["lane"] == "batch", reply.text
        reply = client.post(
            "/api/v1/batch/estimate?lane=batch", content=b'{"text": "One."}\n', headers=ndjson
        )
        assert reply.status_code == 200 and reply.json()["lane"] == "batch", reply.text
        # The job line and the query both apply; a value given in both that differs: 422.
        capped = b'{"job": {"max_cost_usd": 2}}\n{"text": "One."}\n'
        reply = client.post("/api/v1/batch/estimate?lane=batch", content=capped, headers=ndjson)
        assert reply.status_code == 200, reply.text
        assert (reply.json()["lane"], reply.json()["max_cost_usd"]) == ("batch", 2)
        reply = client.post("/api/v1/batch/estimate?lane=live", content=lines, headers=ndjson)
        assert reply.status_code == 422 and "differs" in reply.json()["error"]["message"]

        refused = client.post("/api/v1/batch/estimate", json=body(2, lane="cheap"))
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "validation_error"
