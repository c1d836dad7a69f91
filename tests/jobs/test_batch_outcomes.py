"""A batch-lane record's next step after each item's result (pure, no Kafka)."""

from __future__ import annotations

from schemas import BatchRecord, RecordEvent
from stream_app.jobs.batch_outcomes import LATER_BATCHES, LaneItem, Produce, TryAgain, next_step
from stream_app.provider.batches import ItemFailed, ItemResend, ItemSkipped, ItemSucceeded
from stream_app.provider.request import prepare_task
from stream_app.provider.usage import Usage

TASK = prepare_task(None, name=None, default_model="claude-sonnet-4-5", default_max_tokens=512)
FIELDS = {"summary": "Late.", "insights": ["late"], "sentiment": "negative", "topics": ["post"]}


def item(**carried: object) -> LaneItem:
    record = RecordEvent(job_id="j", index=3, record=BatchRecord(text="Late parcel.", id="r3"))
    return LaneItem(record=record, **carried)  # type: ignore[arg-type]


def test_a_success_is_the_result_at_batch_lane_with_every_token() -> None:
    carried = item(usage=Usage(10, 5).fields(), attempts=1, retries_used=1)
    step = next_step(carried, ItemSucceeded(FIELDS, Usage(100, 20)), TASK, retries=1, now=9.0)
    assert isinstance(step, Produce)
    result = step.result
    assert result.success and result.lane == "batch" and result.record_id == "r3"
    assert (result.input_tokens, result.output_tokens, result.attempts) == (110, 25, 2)
    assert result.response is not None and result.response.metadata.tokens_used == 135


def test_a_record_fault_uses_a_retry_then_fails_with_its_tokens() -> None:
    bad = ItemResend("structured output did not validate", Usage(50, 9), uses_retry=True)
    first = next_step(item(), bad, TASK, retries=1)
    assert isinstance(first, TryAgain) and first.lane == "batch"
    assert first.item.retries_used == 1 and first.item.billed == Usage(50, 9)
    second = next_step(first.item, bad, TASK, retries=1)
    assert isinstance(second, Produce) and not second.result.success
    assert second.result.input_tokens == 100 and second.result.attempts == 2


def test_expiry_goes_to_a_later_batch_then_live() -> None:
    expired = ItemResend("expired")
    step = next_step(item(), expired, TASK, retries=0)
    assert isinstance(step, TryAgain) and step.lane == "batch"
    for _ in range(LATER_BATCHES - 1):
        step = next_step(step.item, expired, TASK, retries=0)
        assert isinstance(step, TryAgain)
    last = next_step(step.item, expired, TASK, retries=0)
    assert isinstance(last, TryAgain) and last.lane == "live"


def test_failed_and_canceled_items() -> None:
    failed = next_step(item(), ItemFailed("prompt is too long", Usage(7)), TASK, retries=1)
    assert isinstance(failed, Produce) and failed.result.error == "prompt is too long"
    assert failed.result.input_tokens == 7
    skipped = next_step(item(), ItemSkipped(), TASK, retries=1)
    assert isinstance(skipped, Produce) and skipped.result.skipped
    assert skipped.result.skip_reason == "cancelled"
    given_up = next_step(item(), ItemSkipped(), TASK, retries=1, given_up=True)
    assert isinstance(given_up, TryAgain)
