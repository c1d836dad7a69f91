"""Reading the messages the agents consume (stream_app.kafka.messages): pure functions over the
bytes a topic carries, without Kafka."""

from __future__ import annotations

import orjson
import pytest
from faust.events import Event
from pydantic import ValidationError

from schemas import JobCancelled, JobCreated, RecordEvent
from stream_app.kafka.messages import (
    dump,
    job_and_index,
    payload,
    scheduling_fields,
    validation_summary,
)
from tests.kafka.test_faust_fixes import consumer_with_acks, message


def record(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_a_record_names_its_job_owner_and_priority_for_the_scheduler() -> None:
    value = record(job_id="j1", index=3, owner="team-a", priority="high", record={"text": "x"})
    assert scheduling_fields(value) == ("j1", "team-a", "high")


def test_a_record_without_owner_or_priority_is_scheduled_as_nobodys() -> None:
    assert scheduling_fields(record(job_id="j1", index=0)) == ("j1", None, None)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"j1"',
        b"null",
        record(job_id=7, owner=["a"], priority=1),
    ],
)
def test_an_unreadable_record_gets_blank_scheduling_fields(value: bytes) -> None:
    # The process agent dead-letters it when its turn comes: the scheduler must not fail.
    assert scheduling_fields(value) == ("", None, None)


def test_fields_of_the_wrong_type_are_blanked_one_by_one() -> None:
    assert scheduling_fields(record(job_id="j1", owner=3, priority="low")) == ("j1", None, "low")
    assert scheduling_fields(record(job_id=None, owner="o", priority=None)) == ("", "o", None)


def test_a_message_naming_its_job_and_index_is_identified_even_when_invalid() -> None:
    # The rest of the record is missing or wrong: it still gets its one outcome.
    assert job_and_index(record(job_id="j1", index=0)) == ("j1", 0)
    assert job_and_index(record(job_id="j1", index=41, record="not an object")) == ("j1", 41)


@pytest.mark.parametrize(
    "value",
    [
        b"{broken",
        b"[]",
        record(index=1),
        record(job_id="", index=1),
        record(job_id="j1"),
        record(job_id="j1", index=-1),
        record(job_id="j1", index="1"),
        record(job_id="j1", index=1.0),
        record(job_id=1, index=1),
    ],
)
def test_a_message_without_a_usable_job_and_index_is_not_identified(value: bytes) -> None:
    assert job_and_index(value) is None


def test_a_validation_error_is_summed_up_field_by_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RecordEvent.model_validate({"index": "x"})
    parts = [part.partition(": ") for part in validation_summary(caught.value).split("; ")]
    assert [field for field, _, _ in parts] == ["job_id", "index", "record"]
    assert all(sep and text for _, sep, text in parts)  # pydantic's message after each


def test_only_the_first_three_errors_are_kept() -> None:
    invalid = {"job_id": "", "total_records": -1, "priority": "x", "max_cost_usd": 0}
    with pytest.raises(ValidationError) as caught:
        JobCreated.model_validate(invalid)
    assert caught.value.error_count() == 4
    fields = [part.split(": ")[0] for part in validation_summary(caught.value).split("; ")]
    assert fields == ["job_id", "total_records", "priority"]


def test_an_error_about_the_whole_value_is_named_value() -> None:
    with pytest.raises(ValidationError) as caught:
        RecordEvent.model_validate("not an object")
    assert validation_summary(caught.value).startswith("value: ")


def test_a_nested_field_is_named_by_its_path() -> None:
    with pytest.raises(ValidationError) as caught:
        RecordEvent.model_validate({"job_id": "j1", "index": 0, "record": {"text": 5}})
    assert "record.text: " in validation_summary(caught.value)


def test_a_payload_goes_on_the_topics_as_json_without_null_fields() -> None:
    assert orjson.loads(dump(JobCancelled(job_id="j1"))) == {"type": "cancelled", "job_id": "j1"}
    cancelled = JobCancelled(job_id="j1", cancelled_at=12.5)
    assert dump(cancelled) == b'{"type":"cancelled","job_id":"j1","cancelled_at":12.5}'


def test_a_tombstone_is_passed_on_as_none_so_it_is_dead_lettered() -> None:
    app, _ = consumer_with_acks()
    m = message(3, generation_id=5)
    m.value = None
    assert payload(Event(app, m.key, m.value, m.headers, m)) is None
    m.value = b'{"job_id": "j1"}'
    assert payload(Event(app, m.key, m.value, m.headers, m)) == b'{"job_id": "j1"}'
