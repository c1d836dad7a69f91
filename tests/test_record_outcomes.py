"""Every answer Claude can give, through the running service (real broker, real SDK, the
simulator): each record's outcome, the calls the provider saw, tokens and cost to the unit."""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

from simulator.testing import SimulatorHandle
from stream_app.provider.pricing import Price, price_for
from tests.conftest import StartService
from tests.support import submit, wait_completed

MODEL = "claude-sonnet-5-5"
SECRET = "sk-test-secret-do-not-log"


def requests_by_tag(sim: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The simulator's requests grouped by the tag each test text starts with ("R3 ...")."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in sim["requests"]:
        grouped[request["text"].split(" ", 1)[0]].append(request)
    return grouped


def billed(requests: list[dict[str, Any]]) -> int:
    return sum(
        r["input_tokens"]
        + r["output_tokens"]
        + r["cache_creation_input_tokens"]
        + r["cache_read_input_tokens"]
        for r in requests
    )


def expected_cost(sim: dict[str, Any], price: Price) -> Decimal:
    return sum(
        (
            price.cost(
                r["input_tokens"],
                r["output_tokens"],
                r["cache_creation_input_tokens"],
                r["cache_read_input_tokens"],
                r["cache_creation_1h_input_tokens"],
            )
            for r in sim["requests"]
        ),
        Decimal(0),
    )


def assert_job_money(body: dict[str, Any], sim: dict[str, Any], price: Price) -> None:
    """The job's split equals what the simulator billed; the cost is exact from it."""
    split = {
        "input_tokens": sim["total_input_tokens_billed"],
        "output_tokens": sim["total_output_tokens_billed"],
        "cache_creation_input_tokens": sim["total_cache_creation_input_tokens_billed"],
        "cache_read_input_tokens": sim["total_cache_read_input_tokens_billed"],
    }
    assert {name: body[name] for name in split} == split
    assert body["total_tokens_used"] == sum(split.values())
    assert body["total_tokens_used"] == sum(r["tokens_used"] for r in body["results"])
    assert Decimal(body["estimated_cost_usd"]) == expected_cost(sim, price)


def test_stop_reasons_and_content_faults_each_get_their_outcome(
    start: StartService, simulator: SimulatorHandle
) -> None:
    texts = [
        "R0 All good here. The product works well.",
        "R1 A long answer. [[sim:needs-tokens=800]]",
        "R2 An endless answer. [[sim:max-tokens]]",
        "R3 Something the model declines. [[sim:refusal]]",
        "R4 Nothing comes back. [[sim:empty]]",
        "R5 The model pauses. [[sim:pause-turn]]",
        "R6 Does not fit the context. [[sim:context-window]]",
        "R7 A huge prompt. [[sim:prompt-too-long]]",
        "R8 A huge request. [[sim:413]]",
    ]
    service = start(
        claude_max_tokens=512, claude_max_tokens_ceiling=1024, batch_record_retry_count=1
    )
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
        ready = client.get("/api/v1/ready").json()
    results = {r["index"]: r for r in body["results"]}
    expected = {
        # index: (error or None for success, attempts, [(status, max_tokens, stop_reason)])
        0: (None, 1, [(200, 512, "end_turn")]),
        1: (None, 2, [(200, 512, "max_tokens"), (200, 1024, "end_turn")]),
        2: (
            "output truncated at 1024 tokens (stop_reason max_tokens, max_tokens 1024)",
            2,
            [(200, 512, "max_tokens"), (200, 1024, "max_tokens")],
        ),
        3: (
            "the model declined to answer this record (stop_reason refusal)",
            1,
            [(200, 512, "refusal")],
        ),
        4: (
            "the model returned no content (stop_reason end_turn)",
            2,
            [(200, 512, "end_turn")] * 2,
        ),
        5: (
            "the model paused its turn before answering (stop_reason pause_turn)",
            2,
            [(200, 512, "pause_turn")] * 2,
        ),
        6: (
            "the record does not fit the model's context window "
            "(stop_reason model_context_window_exceeded)",
            1,
            [(200, 512, "model_context_window_exceeded")],
        ),
        7: (
            "HTTP 400 invalid_request_error: prompt is too long: 210345 tokens > 200000 maximum",
            1,
            [(400, 512, None)],
        ),
        8: (
            "HTTP 413 request_too_large: Request exceeds the maximum allowed number of bytes.",
            1,
            [(413, 512, None)],
        ),
    }
    sim = simulator.stats()
    seen = requests_by_tag(sim)
    for index, (error, attempts, calls) in expected.items():
        result, requests = results[index], seen[f"R{index}"]
        assert result.get("error") == error, (index, result)
        assert result["success"] is (error is None)
        assert result["attempts"] == attempts, index
        assert [(r["status"], r["max_tokens"], r["stop_reason"]) for r in requests] == calls
        assert result["tokens_used"] == billed(requests), index
    assert (body["completed_count"], body["failed_count"]) == (2, 7)
    assert results[1]["response"]["metadata"]["output_tokens"] == 512 + 800
    assert_job_money(body, sim, price_for(MODEL))
    # All of these are the records' own: the provider stayed available throughout.
    assert ready["provider"] == {"state": "available", "refused_calls_total": 0}
    service.stop()
    assert "provider unavailable" not in service.logs()
    assert SECRET not in service.logs()


def test_cache_tokens_are_counted_and_priced_with_an_input_price_override(
    start: StartService, simulator: SimulatorHandle
) -> None:
    texts = [
        "C0 A cached prompt. [[sim:cache-write=1000]]",
        "C1 Another one. [[sim:cache-write-1h=300]] [[sim:cache-read=2000]]",
        "C2 A gateway without cache counts. [[sim:usage-nulls]]",
        "C3 A plain record. Nothing cached.",
    ]
    service = start(batch_cost_per_1k_input_tokens="0.01")
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
    sim = simulator.stats()
    assert sim["by_status"] == {"200": 4}
    assert sim["total_cache_creation_input_tokens_billed"] == 1300
    assert sim["total_cache_read_input_tokens_billed"] == 2000
    price = price_for(MODEL, input_per_1k=Decimal("0.01"))
    assert_job_money(body, sim, price)
    # The cache tokens are priced at the model's ratios to its input price, applied to the
    # overridden one: Sonnet 5.5 writes at 1.25x (1-hour: 2x) and reads at 0.05x.
    plain = price.cost(sim["total_input_tokens_billed"], sim["total_output_tokens_billed"])
    cache = Decimal("1000") * Decimal("0.0125") + 300 * Decimal("0.02") + 2000 * Decimal("0.0005")
    assert Decimal(body["estimated_cost_usd"]) == plain + cache / 1000
    results = {r["index"]: r for r in body["results"]}
    seen = requests_by_tag(sim)
    for index in range(4):
        meta = results[index]["response"]["metadata"]
        [request] = seen[f"C{index}"]
        assert meta["tokens_used"] == results[index]["tokens_used"] == billed([request])
        assert meta["cache_creation_input_tokens"] == request["cache_creation_input_tokens"]
        assert meta["cache_read_input_tokens"] == request["cache_read_input_tokens"]


# (marker, the least and the most seconds between the 429 and the retry)
WAITS = [
    ("retry-after=2", 2.0, 3.5),
    ("retry-after=1.5", 1.5, 3.0),
    ("retry-after=date+2", 1.8, 3.5),  # an HTTP-date: whole seconds, rounded up
    ("retry-after-ms=1500", 1.5, 3.0),
    ("reset-after=2", 1.8, 3.5),  # no retry-after: anthropic-ratelimit-requests-reset
    ("retry-after=soon", 0.0, 1.0),  # garbage: ignored, no exception
    ("retry-after=-5", 0.0, 1.0),  # negative: ignored
    ("retry-after=1e12", 2.9, 4.5),  # absurd: capped at BATCH_RETRY_AFTER_CAP_SECONDS
    ("429-input-tokens=2.5", 2.4, 4.0),  # retry-after 1, but the input-token budget is held
]


def test_every_form_of_retry_after_is_honoured(
    start: StartService, simulator: SimulatorHandle
) -> None:
    texts = [f"W{i} Please wait. [[sim:{marker}]]" for i, (marker, _, _) in enumerate(WAITS)]
    # One call at a time, so each wait is measured on its own.
    service = start(batch_max_concurrent_llm_calls=1, batch_retry_after_cap_seconds=3)
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
    assert (body["completed_count"], body["failed_count"]) == (len(WAITS), 0)
    assert {r["attempts"] for r in body["results"]} == {2}  # a 429 uses up no retry
    sim = simulator.stats()
    assert sim["by_status"] == {"429": len(WAITS), "200": len(WAITS)}
    seen = requests_by_tag(sim)
    for index, (marker, least, most) in enumerate(WAITS):
        throttled, served = seen[f"W{index}"]
        assert (throttled["status"], served["status"]) == (429, 200)
        gap = served["t"] - throttled["t_done"]
        assert least <= gap <= most, (marker, gap)
    service.stop()
    logs = service.logs()
    assert 'ignored unreadable wait header header="retry-after" value="soon"' in logs
    assert 'ignored unreadable wait header header="retry-after" value="-5"' in logs
    assert len(re.findall(r"longer wait than BATCH_RETRY_AFTER_CAP_SECONDS", logs)) == 1
    assert "asked_seconds=1000000000000.0 capped_seconds=3.0" in logs
    assert "Traceback" not in logs and "internal error" not in logs


def test_an_unexpected_exception_becomes_a_failed_outcome_and_the_worker_goes_on(
    start: StartService, simulator: SimulatorHandle
) -> None:
    texts = [
        "E0 A fine record. Works well.",
        "E1 An answer that is no message. [[sim:unreadable]]",
        "E2 Once no message, then fine. [[sim:unreadable-once]]",
        "E3 Another fine record. Works well.",
    ]
    service = start(batch_record_retry_count=0)
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
        sim = simulator.stats()
        # The worker still takes records: nothing was left unacknowledged.
        after = wait_completed(client, submit(client, ["E4 Afterwards. Works."]))
    results = {r["index"]: r for r in body["results"]}
    assert [results[i]["success"] for i in range(4)] == [True, False, True, True]
    # The exception at the record's boundary, named for what the provider sent.
    assert results[1]["error"].startswith(
        "unreadable answer again: the provider's answer is not a message (HTTP 200, text/plain"
    )
    assert "check ANTHROPIC_BASE_URL" in results[1]["error"]
    # Retried once (nothing was billed), whatever BATCH_RECORD_RETRY_COUNT says.
    assert (results[1]["attempts"], results[2]["attempts"]) == (2, 2)
    assert after["completed_count"] == 1
    seen = requests_by_tag(sim)
    assert [len(seen[f"E{i}"]) for i in range(4)] == [1, 2, 2, 1]
    assert_job_money(body, sim, price_for(MODEL))
    service.stop()
    logs = service.logs()
    # Each exception logged once, with its traceback.
    assert logs.count("internal error while processing a record") == 3
    assert logs.count("Traceback (most recent call last)") == 3


def test_an_answer_slower_than_claude_timeout_seconds_succeeds_with_one_paid_call(
    start: StartService, simulator: SimulatorHandle
) -> None:
    """The provider takes 5 s over a 3 s CLAUDE_TIMEOUT_SECONDS (as a long output takes
    longer than the default 60 s): the call's timeout follows the time its max_tokens can
    take, so the record gets the answer it paid for, in one call, not a timeout and a retry."""
    service = start(claude_timeout_seconds=3)
    texts = ["S0 A long generation. [[sim:slow=5000]]", "S1 A quick one."]
    with service.client() as client:
        body = wait_completed(client, submit(client, texts))
    sim = simulator.stats()
    assert sim["by_status"] == {"200": 2}
    [slow] = requests_by_tag(sim)["S0"]
    assert slow["t_done"] - slow["t"] >= 5.0
    results = {r["index"]: r for r in body["results"]}
    assert (body["completed_count"], body["failed_count"]) == (2, 0)
    assert results[0]["success"] and results[0]["attempts"] == 1
    assert_job_money(body, sim, price_for(MODEL))
    service.stop()
