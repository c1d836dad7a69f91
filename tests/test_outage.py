"""When the provider fails broadly, or refuses the service's configuration, no record fails
for it: calls wait, single probes find out when it works again, and the service says so
(the running service on the real broker, the real SDK, the simulator)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest

from simulator.testing import SimulatorHandle
from stream_app.provider.pricing import price_for
from tests.conftest import StartService
from tests.support import status, submit, wait_completed, wait_until
from tests.test_record_outcomes import assert_job_money

SECRET = "sk-test-secret-do-not-log"


def at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def provider_state(client: httpx.Client, state: str) -> dict[str, Any] | None:
    reply = client.get("/api/v1/ready")
    body = reply.json()
    # The provider's state never makes the worker unready: its checks are all "ok" but for
    # a consumer-group rebalance, which a loaded machine may cause (a missed heartbeat).
    assert reply.status_code == 200 or set(body["checks"].values()) <= {"ok", "rebalancing"}, (
        reply.text
    )
    if reply.status_code != 200:
        return None
    provider: dict[str, Any] = body["provider"]
    return provider if provider["state"] == state else None


def quiet_reading(
    client: httpx.Client, simulator: SimulatorHandle, state: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The provider state and the simulator's stats, read together while no call is out:
    after a probe was answered and well before the next one is due."""
    provider = provider_state(client, state)
    if provider is None or at(provider["next_probe_at"]) - time.time() < 0.3:
        return None
    sim = simulator.stats()
    if sim["in_flight"] or at(provider["next_probe_at"]) - time.time() < 0.1:
        return None
    return provider, sim


def probes_at_most(seconds: float, base: float, cap: float) -> int:
    """Most probes in `seconds`: each waits at least half its backoff (the jitter floor)."""
    count, elapsed = 0, 0.0
    while True:
        elapsed += 0.5 * min(cap, base * 2**count)
        if elapsed > seconds:
            return count
        count += 1


def test_an_outage_fails_no_record_sends_single_probes_and_resumes(
    start: StartService, simulator: SimulatorHandle
) -> None:
    records, concurrency, threshold, base, cap, outage = 120, 5, 3, 0.5, 2.0, 10.0
    simulator.configure(latency_ms=30)
    service = start(
        claude_requests_per_minute=600,
        batch_max_concurrent_llm_calls=concurrency,
        batch_breaker_threshold=threshold,
        batch_probe_base_seconds=base,
        batch_probe_max_seconds=cap,
        batch_record_retry_count=1,
    )
    texts = [f"O{i} Ticket {i}: the invoice total is wrong; refund asked." for i in range(records)]
    with service.client() as client:
        job_id = submit(client, texts)
        wait_until(
            lambda: status(client, job_id, params={"limit": "0"})["completed_count"] >= 30,
            timeout=60,
            what="a quarter of the job done",
        )
        began = time.time()
        simulator.configure(force_status=529)
        opened = wait_until(
            lambda: provider_state(client, "unavailable"), timeout=15, what="breaker open"
        )
        assert opened["message"] == "HTTP 529 overloaded_error: Overloaded (simulated)."
        assert began <= at(opened["since"]) <= began + 5
        job = status(client, job_id, params={"limit": "0"})
        assert job["status"] == "running" and job["failed_count"] == 0
        assert job["provider"]["state"] == "unavailable"
        assert job["provider"]["since"] == opened["since"]
        wait_until(lambda: time.time() >= began + outage, timeout=outage + 1, what="the outage")
        provider, during = wait_until(
            lambda: quiet_reading(client, simulator, "unavailable"), timeout=10, what="quiet"
        )
        simulator.configure(force_status=None)
        ended = time.time()
        body = wait_completed(client, job_id, timeout=120)
        after = client.get("/api/v1/ready").json()["provider"]
    sim = simulator.stats()
    refused = [r for r in sim["requests"] if r["status"] == 529]
    # No record failed, none was paid twice, every refused call was counted by the worker.
    assert (body["completed_count"], body["failed_count"]) == (records, 0)
    assert sim["by_status"] == {"200": records, "529": len(refused)}
    assert len(refused) == provider["refused_calls_total"] == after["refused_calls_total"]
    assert after["state"] == "available"
    assert_job_money(body, sim, price_for("claude-sonnet-5-5"))
    # Calls during the outage: those in flight when it began, those that failed before the
    # breaker opened, then single probes with capped exponential backoff.
    assert all(began <= r["t_done"] <= ended + 0.2 for r in refused)
    assert (
        threshold
        <= len(refused)
        <= concurrency + threshold + probes_at_most(ended - began, base, cap)
    )
    probes = [r for r in refused if r["t"] > at(opened["since"]) + 0.2]
    assert len(probes) >= 3
    for earlier, later in zip(probes, probes[1:], strict=False):
        assert later["t"] >= earlier["t_done"]  # one at a time
    assert provider["failed_probes"] == len(probes)
    # Resumed within one probe interval of the end.
    first_served = min(r["t"] for r in sim["requests"] if r["status"] == 200 and r["t"] > ended)
    assert first_served - ended <= cap + 0.5
    assert during["by_status"]["529"] == len(refused)
    service.stop()
    logs = service.logs()
    assert logs.count("provider unavailable: every call waits") >= 1
    assert "calls resume" in logs


CONFIGURATION_FAULTS = {
    "401": (
        {"api_keys": ["sk-someone-else"]},
        {"api_keys": None},
        "HTTP 401 authentication_error: invalid x-api-key",
    ),
    "403": (
        {"force_status": 403},
        {"force_status": None},
        "HTTP 403 permission_error: Your API key does not have permission to use the "
        "specified resource.",
    ),
    "404": (
        {"models": ["claude-other-model"]},
        {"models": None},
        "HTTP 404 not_found_error: model: claude-sonnet-5-5",
    ),
    "400": (
        {"force_status": 400},
        {"force_status": None},
        "HTTP 400 invalid_request_error: output_config.format.schema: the schema is not "
        "supported (simulated).",
    ),
}


@pytest.mark.parametrize("fault", sorted(CONFIGURATION_FAULTS))
def test_a_configuration_fault_stops_the_line_not_the_job(
    start: StartService, simulator: SimulatorHandle, fault: str
) -> None:
    broken, fixed, message = CONFIGURATION_FAULTS[fault]
    records, concurrency = 6, 2
    simulator.configure(**broken)
    service = start(
        batch_max_concurrent_llm_calls=concurrency,
        batch_probe_base_seconds=0.5,
        batch_probe_max_seconds=1.5,
        batch_stall_after_seconds=2,
    )
    texts = [f"K{i} A support ticket about a late delivery." for i in range(records)]
    with service.client() as client:
        job_id = submit(client, texts)
        stopped = wait_until(
            lambda: provider_state(client, "configuration_error"), timeout=30, what="stop"
        )
        assert stopped["message"] == message

        def stalled_and_probing() -> dict[str, Any] | None:
            body = status(client, job_id, params={"limit": "0"})
            waiting = body["stalled"] and body["provider"]["failed_probes"] >= 2
            return body if waiting else None

        job = wait_until(stalled_and_probing, timeout=30, what="a stalled, probing job")
        # The job waits; no record is failed for the configuration.
        assert (job["status"], job["completed_count"], job["failed_count"]) == ("pending", 0, 0)
        assert job["provider"]["state"] == "configuration_error"
        assert job["provider"]["message"] == message
        provider, sim = wait_until(
            lambda: quiet_reading(client, simulator, "configuration_error"),
            timeout=10,
            what="a quiet moment",
        )
        # Every call so far was refused: those in flight when the line stopped, then probes.
        assert sim["by_status"] == {fault: provider["refused_calls_total"]}
        assert 1 <= provider["refused_calls_total"] - provider["failed_probes"] <= concurrency
        simulator.configure(**fixed)  # e.g. the key rotated: the next probe succeeds
        body = wait_completed(client, job_id, timeout=60)
        after = client.get("/api/v1/ready").json()["provider"]
    assert (body["completed_count"], body["failed_count"]) == (records, 0)
    sim = simulator.stats()
    assert sim["by_status"] == {fault: after["refused_calls_total"], "200": records}
    assert after["state"] == "available"
    assert_job_money(body, sim, price_for("claude-sonnet-5-5"))
    service.stop()
    logs = service.logs()
    assert logs.count("provider refuses the configuration") == 1  # said once
    assert logs.count("calls resume") == 1
    assert SECRET not in logs and "sk-someone-else" not in logs
