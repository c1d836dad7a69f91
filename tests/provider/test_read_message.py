"""Reading a Messages API answer as JSON (stream_app.provider.client.read_message)."""

from __future__ import annotations

import httpx2
import orjson
import pytest

from stream_app.core.exceptions import UnreadableAnswer
from stream_app.provider.client import read_message
from stream_app.provider.usage import Usage


def _reply(body: bytes, content_type: str = "application/json") -> httpx2.Response:
    return httpx2.Response(200, content=body, headers={"content-type": content_type})


def test_a_message_is_read_with_its_blocks_stop_reason_and_usage() -> None:
    body = orjson.dumps(
        {
            "type": "message",
            "content": [{"type": "text", "text": "{}"}, {"type": "tool_use", "id": "t"}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 12,
                "output_tokens": 7,
                "cache_read_input_tokens": 3,
                "cache_creation": {"ephemeral_1h_input_tokens": 4, "ephemeral_5m_input_tokens": 1},
            },
        }
    )
    message = read_message(body, _reply(body))
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["stop_reason"] == "end_turn"
    assert Usage.from_api(message["usage"]) == Usage(
        input_tokens=12,
        output_tokens=7,
        cache_creation_input_tokens=5,
        cache_read_input_tokens=3,
        cache_creation_1h_input_tokens=4,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"type": "error", "error": {"type": "overloaded_error"}}',
        b'{"type": "message", "content": null}',
        b"[1, 2]",
        b'{"type": "mess',
    ],
)
def test_what_is_not_a_message_is_an_unreadable_answer(body: bytes) -> None:
    with pytest.raises(UnreadableAnswer, match="is not a message"):
        read_message(body, _reply(body, "text/html"))


def test_a_usage_count_that_is_not_a_whole_number_is_refused_from_json_too() -> None:
    with pytest.raises(ValueError, match="unreadable token count"):
        Usage.from_api({"input_tokens": "12", "output_tokens": 1})
