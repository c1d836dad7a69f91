"""Reading server-sent events in tests (as a browser's EventSource would)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


def read_events(reply: httpx.Response) -> Iterator[Event]:
    """Events of an open streaming response, in order (comments and pings skipped)."""
    name, data, event_id = "message", [], None
    for line in reply.iter_lines():
        if not line:
            if data:
                yield Event(name, "\n".join(data), event_id)
            name, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def collect(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    stop_after_results: int | None = None,
    timeout: float = 60.0,
) -> tuple[list[Event], bool]:
    """Events of /events until `end` (returns ended=True) or `stop_after_results` results."""
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    events: list[Event] = []
    results = 0
    with client.stream(
        "GET",
        f"/api/v1/batch/{job_id}/events",
        headers=headers,
        timeout=httpx.Timeout(10.0, read=timeout),
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for event in read_events(reply):
            events.append(event)
            if event.event == "end":
                return events, True
            if event.event == "result":
                results += 1
                if stop_after_results is not None and results >= stop_after_results:
                    return events, False
    return events, False
