"""The batch lane's provider side: requests, custom_ids, what each item means (pure), and one
provider batch through the real SDK against the simulator."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import anthropic
import orjson
import pytest

from schemas import TaskSpec
from simulator import SimulatorConfig, run_simulator
from simulator.testing import SimulatorHandle
from stream_app.provider.batches import (
    BatchClient,
    ItemFailed,
    ItemResend,
    ItemSkipped,
    ItemSucceeded,
    PollPolicy,
    at_batch_rates,
    batch_request,
    custom_id,
    read_item,
    record_index,
)
from stream_app.provider.pricing import price_for
from stream_app.provider.request import prepare_task
from stream_app.provider.usage import Usage

MODEL = "claude-sonnet-4-5"
TASK = prepare_task(None, name=None, default_model=MODEL, default_max_tokens=512)
LONG_TASK = prepare_task(
    TaskSpec(
        instructions="Summarise the ticket carefully. " * 200,
        output_schema={
            "type": "object",
            "properties": {"summary": {"type": "string"}},
            "required": ["summary"],
            "additionalProperties": False,
        },
    ),
    name="long",
    default_model=MODEL,
    default_max_tokens=512,
)
VALID = orjson.dumps(
    {
        "summary": "A late parcel.",
        "insights": ["late"],
        "sentiment": "negative",
        "topics": ["delivery"],
    }
).decode()


# --- custom_id ------------------------------------------------------------------------------


def test_custom_id_of_a_hex_job_id_is_job_and_index() -> None:
    job_id = uuid.uuid4().hex
    assert custom_id(job_id, 17) == f"{job_id}-17"
    assert record_index(custom_id(job_id, 17)) == 17


@pytest.mark.parametrize(
    "job_id", ["with-dash", "spaces and ünïcode", "x" * 200, "a/b", "dashed-uuid-" * 3]
)
def test_custom_id_of_other_job_ids_is_a_hash_that_fits(job_id: str) -> None:
    made = custom_id(job_id, 123_456_789)
    assert 1 <= len(made) <= 64
    assert all(c.isalnum() or c in "_-" for c in made) and made.isascii()
    assert record_index(made) == 123_456_789
    assert custom_id(job_id, 1) != custom_id(job_id + "x", 1)
    assert custom_id(job_id, 1) == custom_id(job_id, 1)


def test_record_index_refuses_foreign_ids() -> None:
    for foreign in ("abc", "abc-", "abc-x1"):
        with pytest.raises(ValueError):
            record_index(foreign)


# --- requests -------------------------------------------------------------------------------


def test_batch_request_is_the_live_request_with_the_one_hour_cache() -> None:
    request = batch_request(LONG_TASK, "The parcel came late.", "job-1")
    live = LONG_TASK.request("The parcel came late.")
    assert request["custom_id"] == "job-1"
    params = request["params"]
    assert {k: v for k, v in params.items() if k != "system"} == {
        k: v for k, v in live.items() if k != "system"
    }
    assert LONG_TASK.cache_prefix
    assert params["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert [b["text"] for b in params["system"]] == [b["text"] for b in live["system"]]
    # A task whose prefix is too short to cache marks nothing.
    assert not TASK.cache_prefix
    short = batch_request(TASK, "x", "j-0")["params"]["system"]
    assert all("cache_control" not in block for block in short)


# --- pricing ----------------------------------------------------------------------------------


def test_batch_rates_halve_every_part_of_the_cost() -> None:
    live = price_for(MODEL)
    batch = at_batch_rates(live)
    usage = Usage(1000, 500, 4000, 2000, 1000)
    assert batch.cost_of(usage) == live.cost_of(usage) / 2
    assert batch.cost_of(Usage(cache_read_input_tokens=10_000)) == Decimal("0.0015")


# --- what an item means -----------------------------------------------------------------------


def succeeded(text: str, stop_reason: str = "end_turn", **usage: Any) -> Any:
    counts = {"input_tokens": 100, "output_tokens": 40, **usage}
    return SimpleNamespace(
        type="succeeded",
        message=SimpleNamespace(
            content=[SimpleNamespace(type="text", text=text)] if text else [],
            stop_reason=stop_reason,
            usage=SimpleNamespace(**counts),
        ),
    )


def errored(kind: str, message: str) -> Any:
    return SimpleNamespace(
        type="errored",
        error={"type": "error", "error": {"type": kind, "message": message}},
    )


def test_succeeded_item_is_the_record_result_with_its_tokens() -> None:
    outcome = read_item(succeeded(VALID, cache_read_input_tokens=7), TASK)
    assert isinstance(outcome, ItemSucceeded)
    assert outcome.fields["summary"] == "A late parcel."
    assert outcome.usage == Usage(100, 40, 0, 7)


def test_unusable_answers_follow_the_live_rules() -> None:
    refused = read_item(succeeded("", "refusal"), TASK)
    assert isinstance(refused, ItemFailed) and "refusal" in refused.message
    assert refused.usage.input_tokens == 100
    invalid = read_item(succeeded("{not json"), TASK)
    assert isinstance(invalid, ItemResend) and invalid.uses_retry
    assert invalid.usage.output_tokens == 40  # paid, so carried into the record's tokens
    cut = read_item(succeeded('{"summary": "A', "max_tokens"), TASK)
    assert isinstance(cut, ItemResend) and cut.uses_retry and "truncated" in cut.reason


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        ("api_error", "Internal server error", ItemResend),
        ("overloaded_error", "Overloaded", ItemResend),
        ("rate_limit_error", "slow down", ItemResend),
        ("invalid_request_error", "prompt is too long: 210345 tokens > 200000", ItemFailed),
        ("request_too_large", "too large", ItemFailed),
        ("invalid_request_error", "max_tokens: 100000 > 64000", ItemFailed),
        ("invalid_request_error", "Simulated invalid request", ItemFailed),
    ],
)
def test_errored_items_get_the_live_classification(kind: str, message: str, expected: type) -> None:
    outcome = read_item(errored(kind, message), TASK)
    assert isinstance(outcome, expected)
    if isinstance(outcome, ItemResend):
        assert not outcome.uses_retry and outcome.usage == Usage()
    if isinstance(outcome, ItemFailed):
        assert message in outcome.message
    if message.startswith("max_tokens"):
        assert isinstance(outcome, ItemFailed)
        assert outcome.message.startswith("refused by validation: HTTP 400")


def test_expired_is_sent_again_and_canceled_is_skipped() -> None:
    expired = read_item(SimpleNamespace(type="expired"), TASK)
    assert isinstance(expired, ItemResend) and not expired.uses_retry
    assert isinstance(read_item(SimpleNamespace(type="canceled"), TASK), ItemSkipped)


# --- one batch through the SDK and the simulator -------------------------------------------------


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorHandle]:
    with run_simulator() as handle:
        yield handle


@pytest.fixture
def sim(shared_sim: SimulatorHandle) -> SimulatorHandle:
    shared_sim.configure(**{**SimulatorConfig().model_dump(), "batch_processing_seconds": 0.3})
    shared_sim.reset()
    return shared_sim


@pytest.fixture
async def batches(sim: SimulatorHandle) -> AsyncIterator[BatchClient]:
    async with anthropic.AsyncAnthropic(
        base_url=sim.base_url, api_key="k", max_retries=0
    ) as client:
        yield BatchClient(client, PollPolicy(first=0.05, longest=0.2, not_found_grace=5.0))


async def test_a_batch_end_to_end_with_every_outcome(
    sim: SimulatorHandle, batches: BatchClient
) -> None:
    job = uuid.uuid4().hex
    texts = [
        "The parcel came late and the box was damaged.",
        "Broken [[sim:fail-400]]",
        "Flaky [[sim:overloaded-once]]",
        "Old [[sim:batch-expired]]",
        "Bad output [[sim:bad-json-once]]",
    ]
    requests = [batch_request(TASK, text, custom_id(job, i)) for i, text in enumerate(texts)]
    sim.configure(batch_not_found_seconds=0.2)
    created = await batches.create(requests)
    seen: list[str] = []

    async def on_poll(batch: Any) -> None:
        seen.append(batch.processing_status)

    ended = await batches.wait_ended(created.id, time.time(), on_poll)
    assert ended.processing_status == "ended" and seen[-1] == "ended"
    outcomes = {
        record_index(item.custom_id): read_item(item.result, TASK)
        async for item in batches.results(created.id, time.time())
    }
    assert sorted(outcomes) == list(range(5))
    assert isinstance(outcomes[0], ItemSucceeded) and outcomes[0].usage.input_tokens > 0
    assert isinstance(outcomes[1], ItemFailed) and "fail-400" in outcomes[1].message
    assert isinstance(outcomes[2], ItemResend) and not outcomes[2].uses_retry
    assert isinstance(outcomes[3], ItemResend)
    assert isinstance(outcomes[4], ItemResend) and outcomes[4].uses_retry
    stats = sim.stats()
    assert stats["batch_not_found_answers"] >= 1  # the early 404 was met and retried
    assert stats["batches_created"] == 1
    assert stats["batch_input_tokens_billed"] == sum(
        o.usage.input_tokens for o in outcomes.values() if isinstance(o, ItemSucceeded | ItemResend)
    )


async def test_a_late_404_is_raised(sim: SimulatorHandle, batches: BatchClient) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await batches.retrieve("msgbatch_unknown", created_at=time.time() - 60)


async def test_cancel_and_adoption_by_request_count(
    sim: SimulatorHandle, batches: BatchClient
) -> None:
    sim.configure(batch_processing_seconds=30.0)
    job = uuid.uuid4().hex
    before = time.time()
    await asyncio.sleep(0.01)
    three = [batch_request(TASK, f"Text {i}.", custom_id(job, i)) for i in range(3)]
    first = await batches.create(three)
    await batches.create(three[:2])
    second = await batches.create(three)
    found = await batches.created_since(before, 3)
    assert [b.id for b in found] == [first.id, second.id]
    assert await batches.created_since(time.time() + 1, 3) == []
    cancelling = await batches.cancel(second.id)
    assert cancelling.processing_status == "canceling"
    ended = await batches.wait_ended(second.id, time.time())
    assert ended.request_counts.canceled == 3
    outcomes = [read_item(i.result, TASK) async for i in batches.results(second.id, time.time())]
    assert all(isinstance(o, ItemSkipped) for o in outcomes) and len(outcomes) == 3


async def test_create_refuses_what_the_provider_would() -> None:
    client = BatchClient(anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9"))
    with pytest.raises(ValueError):
        await client.create([])
