"""What the intake refuses, and how it says so: every refusal names the record (its index or
line), the limit and the fix, before anything is produced. Pure checks first, then the real
service on the test broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from api.bodies import BodyType, parse_submission, record_limit
from api.errors import ApiError
from api.streams import _lines
from simulator.testing import SimulatorHandle
from stream_app.core.settings import Settings
from tests.conftest import StartService
from tests.support import wait_completed

SMALL = Settings(_env_file=None, batch_max_record_bytes=2048, batch_max_text_chars=1000)  # type: ignore[call-arg]


def _refusal(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value.status, raised.value.code, raised.value.message


def test_a_record_over_the_message_limit_is_refused_naming_its_index_and_the_limit() -> None:
    fine = {"text": "short", "metadata": {"blob": "x" * 1500}}
    big = {"text": "short", "metadata": {"blob": "x" * 3000}}
    for body in (
        {"records": [fine, big]},
        {"records": [fine, {**big, "id": 7}]},  # not plain: through BatchRecord
    ):
        status, code, message = _refusal(
            lambda body=body: parse_submission(orjson.dumps(body), SMALL)
        )
        assert (status, code) == (413, "record_too_large")
        assert message.startswith("records.1: the record is 3,")
        assert "at most 2,048 are allowed (BATCH_MAX_RECORD_BYTES" in message
    _, records = parse_submission(orjson.dumps({"records": [fine]}), SMALL)
    assert len(records[0]) <= 2048


def test_the_record_limit_never_passes_what_a_kafka_message_carries() -> None:
    settings = Settings(_env_file=None, batch_max_record_bytes=5_000_000)  # type: ignore[call-arg]
    assert record_limit(settings) < settings.kafka_max_request_bytes
    assert record_limit(Settings(_env_file=None)) == 500_000  # type: ignore[call-arg]


def _request(chunks: list[bytes]) -> Request:
    """A Starlette request whose body arrives in `chunks`, as the ASGI server hands it."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


async def _read(chunks: list[bytes], max_line: int = 10_000, charset: str = "utf-8") -> list[str]:
    lines: AsyncIterator[tuple[int, str]] = _lines(
        _request(chunks), max_line, SMALL, BodyType("text/csv", charset)
    )
    return [line async for _, line in lines]


def test_a_byte_that_is_not_utf8_is_reported_on_its_own_line() -> None:
    body = b"".join(b"line %d\n" % i for i in range(1, 51)) + b"caf\xe9\nlast\n"
    for chunks in ([body], [body[:100], body[100:]], [body[:-8], body[-8:]]):
        _, _, message = _refusal(lambda chunks=chunks: asyncio.run(_read(chunks)))
        assert message.startswith("line 51: not utf-8 text"), (chunks, message)
    # Named in the content type, the charset is honoured.
    assert asyncio.run(_read([b"caf\xe9\n"], charset="iso8859-1")) == ["café"]


def test_a_line_longer_than_any_record_is_refused_naming_the_limits() -> None:
    for chunks in ([b"a\n" + b"x" * 200 + b"\nb\n"], [b"a\n", b"x" * 200, b"\nb\n"]):
        status, code, message = _refusal(
            lambda chunks=chunks: asyncio.run(_read(chunks, max_line=100))
        )
        assert (status, code) == (413, "record_too_large")
        assert message.startswith("line 2: longer than 100 characters")
        assert "1,000 characters of text (BATCH_MAX_TEXT_CHARS)" in message


def test_big_records_are_refused_at_intake_for_json_ndjson_and_csv(start: StartService) -> None:
    service = start()
    blob = "x" * 1_500_000
    near = "y" * 480_000  # just under the default 500,000 bytes: taken and processed
    with service.client(timeout=60.0) as client:
        answers = {
            "json": client.post(
                "/api/v1/batch",
                json={"records": [{"text": "fine"}, {"text": "short", "metadata": {"blob": blob}}]},
            ),
            "ndjson": client.post(
                "/api/v1/batch",
                content='{"text": "fine"}\n'
                + json.dumps({"text": "short", "metadata": {"blob": blob[:1_200_000]}})
                + "\n",
                headers={"content-type": "application/x-ndjson"},
            ),
            "csv": client.post(
                "/api/v1/batch",
                content=f"text,blob\nfine,a\nfine,b\nshort,{blob[:520_000]}\n",
                headers={"content-type": "text/csv"},
            ),
            "estimate": client.post(
                "/api/v1/batch/estimate",
                json={"records": [{"text": "short", "metadata": {"blob": blob}}]},
            ),
        }
        where = {"json": "records.1", "ndjson": "line 2", "csv": "line 4", "estimate": "records.0"}
        for kind, answer in answers.items():
            assert answer.status_code == 413, (kind, answer.text[:300])
            error = answer.json()["error"]
            assert error["code"] == "record_too_large", (kind, error)
            assert error["message"].startswith(f"{where[kind]}: "), (kind, error)
            assert "500,000" in error["message"] and "BATCH_MAX_RECORD_BYTES" in error["message"]
        # Nothing of the refused requests was produced.
        assert client.get("/api/v1/batch/jobs").json()["jobs"] == []

        taken = client.post(
            "/api/v1/batch",
            json={"records": [{"text": "near the limit", "metadata": {"blob": near}}]},
        )
        assert taken.status_code == 202, taken.text[:300]
        body = wait_completed(client, taken.json()["job_id"])
    assert (body["completed_count"], body["failed_count"]) == (1, 0)


def test_content_types_charsets_duplicate_columns_and_numeric_ids(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start()
    with service.client() as client:
        for media_type in ("text/plain", "multipart/form-data; boundary=x", "application/xml"):
            answer = client.post(
                "/api/v1/batch", content=b"text\nhello\n", headers={"content-type": media_type}
            )
            assert answer.status_code == 415, (media_type, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "unsupported_media_type"
            for accepted in ("application/json", "application/x-ndjson", "text/csv"):
                assert accepted in error["message"]
        # No content type: read as JSON when it is JSON, else the same 415.
        bare = client.post("/api/v1/batch", content=b"text\nhello\n")
        assert bare.status_code == 415 and "no content-type" in bare.json()["error"]["message"]
        # A 415 from the estimate too.
        assert (
            client.post(
                "/api/v1/batch/estimate", content=b"x", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )

        twice = client.post(
            "/api/v1/batch",
            content="text,stars,text\na,1,b\n",
            headers={"content-type": "text/csv"},
        )
        assert twice.status_code == 422
        assert twice.json()["error"]["message"] == (
            "line 1: the header names column 'text' more than once (columns: text, stars, "
            "text); give each column its own name"
        )

        lines = (
            b"".join(b'{"text": "ok %d"}\n' % i for i in range(1, 51)) + b'{"text": "caf\xe9"}\n'
        )
        latin_in_utf8 = client.post(
            "/api/v1/batch", content=lines, headers={"content-type": "application/x-ndjson"}
        )
        assert latin_in_utf8.status_code == 422
        assert latin_in_utf8.json()["error"]["message"].startswith("line 51: not utf-8 text")

        latin = client.post(
            "/api/v1/batch",
            content="text,id\nCafé crème froid,7\n".encode("iso-8859-1"),
            headers={"content-type": "text/csv; charset=iso-8859-1"},
        )
        assert latin.status_code == 202, latin.text
        numeric = client.post(
            "/api/v1/batch", json={"records": [{"text": "Order 42 late.", "id": 42}]}
        )
        assert numeric.status_code == 202, numeric.text
        streamed = client.post(
            "/api/v1/batch",
            content=b'{"text": "Order 43 late.", "id": 43}\n',
            headers={"content-type": "application/x-ndjson"},
        )
        assert streamed.status_code == 202, streamed.text
        bodies = [wait_completed(client, r.json()["job_id"]) for r in (latin, numeric, streamed)]
    assert [b["results"][0]["record_id"] for b in bodies] == ["7", "42", "43"]
    texts = {r["text"] for r in simulator.stats()["requests"]}
    assert "Café crème froid" in texts


def test_a_task_error_names_the_field_and_what_a_task_is() -> None:
    def refusal(task: object) -> str:
        body = orjson.dumps({"records": [{"text": "a"}], "task": task})
        return _refusal(lambda: parse_submission(body, SMALL))[2]

    no_instructions = refusal({"output_schema": {"type": "object"}})
    assert no_instructions.startswith("task.instructions: Field required (a task is {")
    assert "TaskSpec" not in no_instructions and "task.str" not in no_instructions
    assert "GET /api/v1/tasks" in no_instructions
    assert refusal(5).startswith("task: must be an object or a preset name")
