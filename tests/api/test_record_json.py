"""api.records: a submitted record's published JSON without a pydantic model per record
must be exactly what BatchRecord would publish, and anything not plain goes to BatchRecord
(which accepts or refuses it with its own message)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from api.bodies import parse_batch, parse_submission
from api.errors import ApiError
from api.records import record_json, validated_json
from schemas import BatchRecord
from stream_app.core.settings import Settings

PLAIN: list[dict[str, Any]] = [
    {"text": "Quarterly report."},
    {"text": "  padded  ", "id": "r-1"},
    {"text": "x", "id": None},
    {"text": "x", "metadata": {}},
    {"metadata": {"a": None, "b": [1, 2.5, {"c": True}], "ü": "é"}, "id": "7", "text": "ünï"},
    {"text": 'line\nbreak \u2028 "quoted" \\ back'},
    {"text": "x", "id": 5},  # a whole number id is kept as its decimal string
    {"text": "x", "id": 0},
]

NOT_PLAIN: list[Any] = [
    {"text": ""},
    {"text": " \n\t"},
    {"text": 3},
    {"text": None},
    {"id": "no text"},
    {"text": "x", "id": 5.5},
    {"text": "x", "id": True},
    {"text": "x", "metadata": None},
    {"text": "x", "metadata": [1]},
    {"text": "x", "extra": 1},
    ["text"],
    "text",
    None,
]


@pytest.mark.parametrize("data", PLAIN)
def test_a_plain_record_is_published_as_batch_record_publishes_it(data: dict[str, Any]) -> None:
    expected = BatchRecord.model_validate(data).model_dump_json(exclude_none=True).encode()
    encoded = record_json(data)
    assert encoded is not None
    assert orjson.loads(encoded) == orjson.loads(expected)
    assert encoded == expected
    assert validated_json(data) == (expected, data["text"])


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_anything_else_is_left_to_batch_record(data: Any) -> None:
    assert record_json(data) is None
    try:
        record = BatchRecord.model_validate(data)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as raised:
            validated_json(data)
        assert str(raised.value) == str(exc)
    else:
        expected = record.model_dump_json(exclude_none=True).encode()
        assert validated_json(data) == (expected, record.text)


SETTINGS = Settings(_env_file=None, batch_max_text_chars=20, batch_max_records_per_request=3)  # type: ignore[call-arg]

BODIES: list[Any] = [
    {"records": [{"text": "a"}, {"text": "b", "id": "2", "metadata": {"k": 1}}]},
    {"records": [{"text": "a"}], "priority": "high", "max_cost_usd": 2.5},
    {"records": [{"text": "a"}, {"text": "b", "id": 7}]},
    {"records": [{"text": "a"}, {"text": "b", "id": 7.5}]},  # not plain: BatchRecord refuses
    {"records": [{"text": "a"}], "lane": "batch", "deadline": "2099-12-07T18:00:00Z"},
    {"records": [{"text": "a"}], "lane": "cheap"},
    {"records": [{"text": "a"}], "deadline": "tomorrow"},
    {"records": [{"text": "a"}], "deadline": "2026-12-07"},
    {"records": [{"text": "a"}, {"text": " "}]},
    {"records": [{"text": "a"}], "priority": "urgent"},
    {"records": [{"text": "a"}, {"text": "x" * 21}]},
    {"records": [{"text": "a"}, {"text": "x" * 21}], "priority": "urgent"},
    {"records": [{"text": "a"}] * 4},
    {"records": []},
    {"records": "a"},
    {"records": [{"text": "a"}], "unknown": 1},
    [],
]


def _outcome(parse: Any, body: bytes) -> Any:
    try:
        return parse(body)
    except ApiError as exc:
        return (exc.status, exc.code, exc.message)


@pytest.mark.parametrize("body", BODIES)
def test_a_json_submit_is_judged_as_parse_batch_judges_it(body: Any) -> None:
    raw = orjson.dumps(body)
    expected = _outcome(lambda b: parse_batch(b, SETTINGS), raw)
    got = _outcome(lambda b: parse_submission(b, SETTINGS), raw)
    if isinstance(expected, tuple):
        assert got == expected
        return
    options, records = got
    assert records == [r.model_dump_json(exclude_none=True).encode() for r in expected.records]
    assert options.model_dump(exclude={"records"}) == expected.model_dump(exclude={"records"})


def test_invalid_json_is_refused_as_before() -> None:
    assert _outcome(lambda b: parse_submission(b, SETTINGS), b"{") == _outcome(
        lambda b: parse_batch(b, SETTINGS), b"{"
    )


def test_an_id_past_64_bits_is_refused_with_a_message_that_says_to_send_a_string() -> None:
    # orjson reads a whole number past 64 bits as a float: its digits are gone, so the
    # record is refused with the fix named (not "Input should be a valid string").
    data = orjson.loads(b'{"text": "x", "id": 123456789012345678901234567890}')
    with pytest.raises(ValidationError) as raised:
        validated_json(data)
    message = str(raised.value)
    assert "at most 64 bits" in message and "send it as a string" in message
    assert "valid string" not in message
