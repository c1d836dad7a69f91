"""The Message Batches API (``/v1/messages/batches``): create, retrieve, list, cancel,
results as JSONL, delete, as the SDK's ``client.messages.batches`` calls them.

Each request of a batch is answered by the same code that answers a live ``/v1/messages``
call (same generator, same usage, same markers), when its turn comes: the requests of a
batch finish one after another, evenly spread over ``batch_processing_seconds`` from the
create, and the batch ends when the last one has. As with the provider, ``request_counts``
show every request as ``processing`` until the whole batch ends.

What the config can make happen (simulator/config.py):
- ``batch_processing_seconds``: how long a batch takes (0: ends at the first read).
- ``batch_concurrency``: how many batches are processed at once (unset: all); a batch
  created while that many are still processing waits for the earliest to end, so batches
  end one after another as they do when the provider is busy.
- ``batch_stall``: batches created while it is set never end before their expiry.
- ``batch_expiry_seconds``: a batch that has not ended by then ends with its unfinished
  requests ``expired`` (the provider's 24 h).
- ``batch_stall_past_expiry`` (with ``batch_stall``): the stalled batches do not end at
  their expiry either, only when cancelled (a provider fault a client must survive).
- ``batch_not_found_seconds``: a retrieve or results call this soon after the create answers
  404 not_found_error (the provider does this seconds after a create; anthropic-sdk-python
  #1432).
- ``batch_create_delay_ms``: the create is accepted (stored, counted, paid for) at once but
  answered this much later: a client killed meanwhile never learns the batch's id.

Per request (markers in its user text, simulator/faults.py): ``[[sim:batch-expired]]``
makes it ``expired``; the live error markers (``fail-400``, ``fail-500-once``, ...) make it
``errored`` with the error the live call would have had.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from simulator.protocol import InvalidRequest

# The provider's limits on one batch.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ItemOutcome:
    """What one request of a batch came to: the JSONL ``result`` object and what it billed."""

    result: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def billed(self) -> bool:
        return self.result["type"] == "succeeded"


# Answers one request's `params` as a live call would: (params, when it arrived, when done).
Answerer = Callable[[dict[str, Any], float], ItemOutcome]


@dataclass
class _Item:
    custom_id: str
    params: dict[str, Any]
    due: float  # Unix time at which its turn comes
    outcome: ItemOutcome | None = None


@dataclass
class Batch:
    id: str
    created: float
    expires: float
    items: list[_Item]
    stalled: bool
    # Not even ended at its expiry (only a cancel ends it).
    stuck: bool = False
    # When its last request is due (the end it was scheduled for at create).
    scheduled_end: float = 0.0
    cancel_initiated: float | None = None
    ended: float | None = None
    deleted: bool = False
    results_base: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def body(self, not_found_until: float | None = None) -> dict[str, Any]:
        """The MessageBatch object."""
        if self.ended is not None:
            status = "ended"
        elif self.cancel_initiated is not None:
            status = "canceling"
        else:
            status = "in_progress"
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if self.ended is None:
            counts["processing"] = len(self.items)
        else:
            for item in self.items:
                assert item.outcome is not None
                counts[item.outcome.result["type"]] += 1
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _rfc3339(self.created),
            "expires_at": _rfc3339(self.expires),
            "ended_at": _rfc3339(self.ended) if self.ended is not None else None,
            "cancel_initiated_at": (
                _rfc3339(self.cancel_initiated) if self.cancel_initiated is not None else None
            ),
            "archived_at": None,
            "results_url": (
                f"{self.results_base}/v1/messages/batches/{self.id}/results"
                if self.ended is not None
                else None
            ),
        }


class BatchNotFound(Exception):
    """No such batch (or not yet visible, or deleted): 404 not_found_error."""


class BatchStore:
    """Every batch the simulator was given, advanced lazily at each read (time is passed in,
    so the logic is testable without a clock)."""

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.created = 0
        # Retrieve/results calls answered 404 because they came too soon after the create.
        self.not_found_answers = 0

    def create(
        self,
        body: Any,
        *,
        now: float,
        processing_seconds: float,
        expiry_seconds: float,
        stall: bool,
        results_base: str,
        concurrency: int | None = None,
        stuck: bool = False,
    ) -> Batch:
        """Validate and store a new batch (raises InvalidRequest as the provider's 400)."""
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise InvalidRequest("requests: Field required (a list of {custom_id, params})")
        requests: list[Any] = body["requests"]
        if not requests:
            raise InvalidRequest("requests: at least one request is required")
        if len(requests) > MAX_REQUESTS:
            raise InvalidRequest(f"requests: at most {MAX_REQUESTS} requests per batch")
        if len(orjson.dumps(body)) > MAX_BYTES:
            raise InvalidRequest("requests: a batch is at most 256 MB")
        start = self._start_time(now, concurrency)
        seen: set[str] = set()
        items: list[_Item] = []
        for index, request in enumerate(requests):
            if not isinstance(request, dict) or not isinstance(request.get("params"), dict):
                raise InvalidRequest(f"requests.{index}.params: Field required")
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                raise InvalidRequest(
                    f"requests.{index}.custom_id: 1-64 characters of [a-zA-Z0-9_-] required"
                )
            if custom_id in seen:
                raise InvalidRequest(
                    f"requests.{index}.custom_id: {custom_id!r} is not unique in the batch"
                )
            seen.add(custom_id)
            due = start + processing_seconds * (index + 1) / len(requests)
            items.append(_Item(custom_id, request["params"], due))
        batch = Batch(
            id=f"msgbatch_sim_{uuid.uuid4().hex[:24]}",
            created=now,
            expires=now + expiry_seconds,
            items=items,
            stalled=stall,
            stuck=stuck,
            scheduled_end=start + processing_seconds,
            results_base=results_base,
        )
        self.batches[batch.id] = batch
        self.created += 1
        return batch

    def _start_time(self, now: float, concurrency: int | None) -> float:
        """When a batch created at ``now`` starts processing: at once while fewer than
        ``concurrency`` batches are scheduled to be processing, else when one of them ends."""
        if concurrency is None:
            return now
        busy = sorted(
            b.scheduled_end
            for b in self.batches.values()
            if b.scheduled_end > now and b.cancel_initiated is None and b.ended is None
        )
        if len(busy) < concurrency:
            return now
        return busy[len(busy) - concurrency]

    def get(self, batch_id: str, now: float, answer: Answerer) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None or batch.deleted:
            raise BatchNotFound(batch_id)
        self.advance(batch, now, answer)
        return batch

    def advance(self, batch: Batch, now: float, answer: Answerer) -> None:
        """Answer the requests whose turn has come; end the batch when all are answered,
        when a cancel was asked for, or at its expiry."""
        if batch.ended is not None:
            return
        cutoff = now if batch.cancel_initiated is None else batch.cancel_initiated
        cutoff = min(cutoff, batch.expires)
        for item in batch.items:
            if item.outcome is None and not batch.stalled and item.due <= cutoff:
                item.outcome = answer(item.params, item.due)
        if batch.cancel_initiated is not None:
            for item in batch.items:
                if item.outcome is None:
                    item.outcome = ItemOutcome({"type": "canceled"})
            batch.ended = max(now, batch.cancel_initiated)
        elif now >= batch.expires and not batch.stuck:
            for item in batch.items:
                if item.outcome is None:
                    item.outcome = ItemOutcome({"type": "expired"})
            batch.ended = batch.expires
        elif all(item.outcome is not None for item in batch.items):
            batch.ended = max(item.due for item in batch.items)

    def listing(
        self,
        now: float,
        answer: Answerer,
        *,
        limit: int,
        after_id: str | None,
        before_id: str | None,
    ) -> dict[str, Any]:
        """A page of batches, newest first (the provider's order), with its cursors."""
        ordered = sorted(
            (b for b in self.batches.values() if not b.deleted),
            key=lambda b: b.created,
            reverse=True,
        )
        ids = [b.id for b in ordered]
        if after_id is not None:
            ordered = ordered[ids.index(after_id) + 1 :] if after_id in ids else []
        elif before_id is not None:
            start = ids.index(before_id) if before_id in ids else 0
            ordered = ordered[max(0, start - limit) : start]
        page = ordered[:limit]
        for batch in page:
            self.advance(batch, now, answer)
        return {
            "data": [b.body() for b in page],
            "has_more": len(ordered) > len(page),
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    def cancel(self, batch_id: str, now: float, answer: Answerer) -> Batch:
        batch = self.get(batch_id, now, answer)
        if batch.ended is None and batch.cancel_initiated is None:
            # Requests whose turn came before the cancel are answered (and paid for).
            self.advance(batch, now, answer)
            batch.cancel_initiated = now
        return batch

    def delete(self, batch_id: str, now: float, answer: Answerer) -> dict[str, Any]:
        batch = self.get(batch_id, now, answer)
        if batch.ended is None:
            raise InvalidRequest(
                f"Batch {batch_id} cannot be deleted while processing; cancel it first."
            )
        batch.deleted = True
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results_jsonl(self, batch: Batch) -> bytes:
        """One JSON line per request: ``{"custom_id", "result"}``, in no promised order
        (the simulator gives them in reverse, so a client relying on order is caught)."""
        lines = []
        for item in reversed(batch.items):
            assert item.outcome is not None
            lines.append(orjson.dumps({"custom_id": item.custom_id, "result": item.outcome.result}))
        return b"\n".join(lines) + b"\n"

    def counters(self) -> dict[str, Any]:
        """Batches created and what their requests were billed (succeeded ones only)."""
        answered = [
            item.outcome
            for batch in self.batches.values()
            for item in batch.items
            if item.outcome is not None
        ]
        billed = [o for o in answered if o.billed]
        return {
            "batches_created": self.created,
            "batch_not_found_answers": self.not_found_answers,
            "batch_items_billed": len(billed),
            "batch_input_tokens_billed": sum(o.input_tokens for o in billed),
            "batch_output_tokens_billed": sum(o.output_tokens for o in billed),
            "batch_cache_creation_input_tokens_billed": sum(
                o.cache_creation_input_tokens for o in billed
            ),
            "batch_cache_read_input_tokens_billed": sum(o.cache_read_input_tokens for o in billed),
            "batches": [
                {
                    "id": b.id,
                    "requests": len(b.items),
                    "custom_ids": [item.custom_id for item in b.items],
                    "created": b.created,
                    "ended": b.ended,
                    "canceled": b.cancel_initiated is not None,
                    "deleted": b.deleted,
                    "items_billed": sum(
                        1 for item in b.items if item.outcome is not None and item.outcome.billed
                    ),
                }
                for b in self.batches.values()
            ],
        }


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
