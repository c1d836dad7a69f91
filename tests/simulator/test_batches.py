"""The simulator's Message Batches API, driven through the real SDK's client.messages.batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import pytest

from simulator import SimulatorConfig, run_simulator
from simulator.testing import SimulatorHandle

MODEL = "claude-simulated"
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorHandle]:
    with run_simulator() as handle:
        yield handle


@pytest.fixture
def sim(shared_sim: SimulatorHandle) -> SimulatorHandle:
    shared_sim.configure(**{**SimulatorConfig().model_dump(), "batch_processing_seconds": 0.3})
    shared_sim.reset()
    return shared_sim


@asynccontextmanager
async def claude(handle: SimulatorHandle) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=handle.base_url, api_key="sim-test", max_retries=0
    ) as client:
        yield client


def request(custom_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": MODEL,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": text}],
            **extra,
        },
    }


async def until_ended(
    client: anthropic.AsyncAnthropic, batch_id: str
) -> anthropic.types.messages.MessageBatch:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}"
        await asyncio.sleep(0.05)


async def results_of(client: anthropic.AsyncAnthropic, batch_id: str) -> dict[str, Any]:
    return {
        item.custom_id: item.result
        async for item in await client.messages.batches.results(batch_id)
    }


async def test_a_batch_is_answered_like_live_calls(sim: SimulatorHandle) -> None:
    texts = {
        f"r-{i}": f"Record {i}: the delivery was late and the box was damaged." for i in range(5)
    }
    async with claude(sim) as client:
        live = await client.messages.create(
            model=MODEL, max_tokens=256, messages=[{"role": "user", "content": texts["r-0"]}]
        )
        created = await client.messages.batches.create(
            requests=[request(cid, text) for cid, text in texts.items()]  # type: ignore[misc]
        )
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 5
        assert created.results_url is None
        ended = await until_ended(client, created.id)
        results = await results_of(client, created.id)
    assert ended.request_counts.succeeded == 5 and ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.results_url is not None
    assert set(results) == set(texts)
    first = results["r-0"]
    assert first.type == "succeeded"
    assert first.message.content == live.content
    assert first.message.usage.input_tokens == live.usage.input_tokens
    assert first.message.usage.output_tokens == live.usage.output_tokens
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["batch_items_billed"] == 5
    assert stats["batch_input_tokens_billed"] == 5 * live.usage.input_tokens
    # Batch requests are not live calls: the live history has only the one call.
    assert len(stats["requests"]) == 1


async def test_per_item_errors_and_expiry(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[  # type: ignore[list-item]
                request("ok", "Fine text."),
                request("bad", "Broken [[sim:fail-400]]"),
                request("flaky", "Flaky [[sim:fail-500-once]]"),
                request("late", "Too late [[sim:batch-expired]]"),
                request("nomax", "x", max_tokens=0),
            ]
        )
        ended = await until_ended(client, created.id)
        results = await results_of(client, created.id)
        counts = ended.request_counts
        assert (counts.succeeded, counts.errored, counts.expired) == (1, 3, 1)
        assert results["ok"].type == "succeeded"
        assert results["late"].type == "expired"
        bad = results["bad"]
        assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"
        flaky = results["flaky"]
        assert flaky.type == "errored" and flaky.error.error.type == "api_error"
        assert results["nomax"].type == "errored"
        # The "-once" fault is spent: the same request in a later batch succeeds.
        again = await client.messages.batches.create(
            requests=[request("flaky", "Flaky [[sim:fail-500-once]]")]  # type: ignore[list-item]
        )
        await until_ended(client, again.id)
        assert (await results_of(client, again.id))["flaky"].type == "succeeded"
    assert sim.stats()["batch_items_billed"] == 2


async def test_create_is_validated(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        for requests in (
            [],
            [request("same", "a"), request("same", "b")],
            [request("has space", "a")],
            [request("x" * 65, "a")],
        ):
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert sim.stats()["batches_created"] == 0


async def test_cancel_keeps_what_finished_and_cancels_the_rest(sim: SimulatorHandle) -> None:
    sim.configure(batch_processing_seconds=1.0)
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[request(f"r{i}", f"Text {i}.") for i in range(10)]  # type: ignore[misc]
        )
        await asyncio.sleep(0.45)
        cancelling = await client.messages.batches.cancel(created.id)
        assert cancelling.processing_status == "canceling"
        assert cancelling.cancel_initiated_at is not None
        ended = await until_ended(client, created.id)
        results = await results_of(client, created.id)
    counts = ended.request_counts
    assert counts.succeeded + counts.canceled == 10
    assert 1 <= counts.succeeded <= 9
    assert sum(r.type == "succeeded" for r in results.values()) == counts.succeeded
    assert sim.stats()["batch_items_billed"] == counts.succeeded


async def test_stalled_batch_ends_expired_at_its_expiry(sim: SimulatorHandle) -> None:
    sim.configure(batch_stall=True, batch_expiry_seconds=0.5)
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[request("a", "One."), request("b", "Two.")]  # type: ignore[list-item]
        )
        assert (await client.messages.batches.retrieve(created.id)).processing_status == (
            "in_progress"
        )
        ended = await until_ended(client, created.id)
        results = await results_of(client, created.id)
    assert ended.request_counts.expired == 2
    assert {r.type for r in results.values()} == {"expired"}
    assert sim.stats()["batch_items_billed"] == 0


async def test_not_found_right_after_create_then_visible(sim: SimulatorHandle) -> None:
    sim.configure(batch_not_found_seconds=0.3, batch_processing_seconds=0.0)
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[request("a", "One.")]  # type: ignore[list-item]
        )
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(created.id)
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.results(created.id)
        await asyncio.sleep(0.35)
        assert (await client.messages.batches.retrieve(created.id)).processing_status == "ended"
    assert sim.stats()["batch_not_found_answers"] == 2


async def test_list_pages_newest_first_and_delete(sim: SimulatorHandle) -> None:
    sim.configure(batch_processing_seconds=0.0)
    async with claude(sim) as client:
        ids = []
        for i in range(3):
            created = await client.messages.batches.create(
                requests=[request("a", f"Text {i}.")]  # type: ignore[list-item]
            )
            ids.append(created.id)
        first = await client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == [ids[2], ids[1]] and first.has_more
        listed = [b.id async for b in client.messages.batches.list(limit=2)]
        assert listed == ids[::-1]
        deleted = await client.messages.batches.delete(ids[0])
        assert (deleted.id, deleted.type) == (ids[0], "message_batch_deleted")
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(ids[0])
        assert [b.id async for b in client.messages.batches.list()] == ids[:0:-1]


async def test_in_progress_batch_cannot_be_deleted(sim: SimulatorHandle) -> None:
    sim.configure(batch_processing_seconds=30.0)
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[request("a", "One.")]  # type: ignore[list-item]
        )
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.delete(created.id)
        await client.messages.batches.cancel(created.id)


async def test_one_hour_cache_ttl_is_written_to_the_one_hour_cache(sim: SimulatorHandle) -> None:
    sim.configure(cache_min_tokens=10, batch_processing_seconds=0.0)
    system = [
        {
            "type": "text",
            "text": "Long shared instructions. " * 20,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    async with claude(sim) as client:
        created = await client.messages.batches.create(
            requests=[  # type: ignore[list-item]
                request("a", "First.", system=system),
                request("b", "Second.", system=system),
            ]
        )
        await until_ended(client, created.id)
        results = await results_of(client, created.id)
    first, second = results["a"].message.usage, results["b"].message.usage  # type: ignore[union-attr]
    assert first.cache_creation_input_tokens > 0
    assert first.cache_creation.ephemeral_1h_input_tokens == first.cache_creation_input_tokens
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens


def test_create_answer_can_be_held_after_the_batch_is_accepted(sim: SimulatorHandle) -> None:
    sim.configure(batch_create_delay_ms=2000)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.batches.create(requests=[request("a", "One.")])  # type: ignore[list-item]
    # The client never learnt the id, but the batch exists (and would be paid).
    assert sim.stats()["batches_created"] == 1
    client.close()


def test_batches_queue_behind_the_providers_concurrency() -> None:
    """With ``batch_concurrency=1`` batches are processed one after another (pure store logic:
    time is passed in)."""
    from simulator.batches import BatchStore, ItemOutcome

    store = BatchStore()

    def answer(params: dict[str, Any], at: float) -> ItemOutcome:
        return ItemOutcome({"type": "succeeded"})

    def create(now: float) -> Any:
        body = {"requests": [request("a", "x"), request("b", "y")]}
        return store.create(
            body,
            now=now,
            processing_seconds=10.0,
            expiry_seconds=1000.0,
            stall=False,
            results_base="",
            concurrency=1,
        )

    first, second, third = create(0.0), create(1.0), create(2.0)
    assert [first.scheduled_end, second.scheduled_end, third.scheduled_end] == [10.0, 20.0, 30.0]
    assert store.get(first.id, 10.0, answer).ended == 10.0
    assert store.get(second.id, 15.0, answer).ended is None
    assert store.get(second.id, 20.0, answer).ended == 20.0
    # Once the queue has drained a new batch starts at once.
    assert create(40.0).scheduled_end == 50.0
