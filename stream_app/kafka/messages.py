"""Reading the messages the agents consume, and sending the unreadable ones to the
dead-letter topic (`batch.dlq`) with the reason, the source topic, partition and offset."""

from __future__ import annotations

import time
from typing import Any, cast

import faust
import orjson
from faust.types import EventT
from pydantic import ValidationError

from schemas import DeadLetter
from stream_app.core.logs import get_logger

log = get_logger(__name__)


def dump(model: Any) -> bytes:
    """A pydantic payload as the topics carry it: plain JSON, no null fields."""
    return cast(bytes, model.model_dump_json(exclude_none=True).encode())


def payload(event: EventT) -> bytes:
    # Typing only: the value is None for a tombstone, and is passed on unchanged. pydantic
    # rejects None with a ValidationError and orjson with a JSONDecodeError, so a tombstone
    # is dead-lettered like any other unreadable message.
    return cast(bytes, event.message.value)


def validation_summary(exc: ValidationError) -> str:
    """The first three of pydantic's errors, each as `field.path: message`."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def scheduling_fields(value: bytes) -> tuple[str, str | None, str | None]:
    """(job_id, owner, priority) of a record event; blanks when unreadable (the process
    agent dead-letters it when its turn comes)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(data, dict):
        return "", None, None
    job_id, owner, priority = data.get("job_id"), data.get("owner"), data.get("priority")
    return (
        job_id if isinstance(job_id, str) else "",
        owner if isinstance(owner, str) else None,
        priority if isinstance(priority, str) else None,
    )


def job_and_index(value: bytes) -> tuple[str, int] | None:
    """(job_id, index) of a record or result message that names them, even when the rest
    of it is invalid; None otherwise."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    job_id, index = data.get("job_id"), data.get("index")
    if isinstance(job_id, str) and job_id and isinstance(index, int) and index >= 0:
        return job_id, index
    return None


class DeadLetters:
    """Sends a consumed message that cannot be processed to the dead-letter topic."""

    def __init__(self, topic: faust.TopicT) -> None:
        self._topic = topic

    async def send(self, event: EventT, reason: str, **extra: Any) -> None:
        """`{"source_topic", "partition", "offset", "key", "value" (first 64 KiB),
        "reason", "at" (epoch seconds), "extra"}`, keyed as the message was."""
        message = event.message
        value = message.value if isinstance(message.value, bytes) else b""
        letter = DeadLetter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key.decode(errors="replace") if isinstance(message.key, bytes) else None,
            value=value[:65536].decode(errors="replace"),
            reason=reason,
            at=time.time(),
            extra=extra,
        )
        await self._topic.send(key=message.key, value=dump(letter))
        log.warning(
            "dead-lettered",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
        )
