"""Idempotency-Key of POST /api/v1/batch: the same key and the same request within
BATCH_IDEMPOTENCY_HOURS answer the first job; the same key with another request is refused.
Pure logic (no Kafka).

The key -> job mapping lives in Kafka: a job submitted with a key carries it (and its
request's hash) in its `created` event on `batch.jobs`, and every worker's batch.jobs
reader (stream_app.kafka.jobs_reader) folds those events into `IdempotencyKeys`. The topic
is read from the beginning at every start, so the mapping survives restarts (for as long
as `batch.jobs` keeps the event: its retention must exceed the idempotency window) and
every instance knows every key. Keys are per tenant (API key name): two tenants may use
the same key.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

# What a key may be: printable ASCII without spaces, as HTTP header values go.
MAX_KEY_LENGTH = 200
HOUR_SECONDS = 3600.0
_PRUNE_EVERY = 1024


class BadIdempotencyKey(ValueError):
    """The header is empty, too long, or holds other than printable ASCII."""


def check_key(raw: str) -> str:
    """The key as given; raises BadIdempotencyKey when it is not 1-200 characters of
    printable ASCII (no spaces)."""
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not all(33 <= ord(c) < 127 for c in key):
        raise BadIdempotencyKey(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters "
            "without spaces (a UUID is a good key)"
        )
    return key


def request_hash(records: Iterable[bytes], options: dict[str, Any]) -> str:
    """SHA-256 (hex) of a submit as the service read it: the job's options (task, cap,
    priority, as the `created` event carries them) and every record's JSON in index order.
    The same records sent as JSON, NDJSON or CSV hash alike."""
    digest = hashlib.sha256(orjson.dumps(options, option=orjson.OPT_SORT_KEYS))
    for record in records:
        digest.update(b"\n")
        digest.update(record)
    return digest.hexdigest()


@dataclass(frozen=True)
class KeyUse:
    job_id: str
    request_hash: str
    total_records: int
    created_at: float


class IdempotencyKeys:
    """(tenant, key) -> the job first submitted with it, as `created` events tell."""

    def __init__(self, window_hours: float = 24.0) -> None:
        # BATCH_IDEMPOTENCY_HOURS: how long a key answers its first job.
        self.window_seconds = window_hours * HOUR_SECONDS
        self._uses: dict[tuple[str | None, str], KeyUse] = {}
        self._by_job: dict[str, tuple[str | None, str]] = {}
        self._locks: dict[tuple[str | None, str], asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._uses)

    def remember(
        self,
        owner: str | None,
        key: str,
        job_id: str,
        request_hash: str,
        total_records: int,
        created_at: float,
    ) -> None:
        """A job was created with the key; the first job of a key wins until the window
        has passed (or the job is deleted): a second job created with it within the window
        (two instances raced) is not named by the key."""
        slot = (owner, key)
        known = self._uses.get(slot)
        if known is not None:
            if known.job_id == job_id or created_at - known.created_at <= self.window_seconds:
                return
            self._by_job.pop(known.job_id, None)
        self._uses[slot] = KeyUse(job_id, request_hash, total_records, created_at)
        self._by_job[job_id] = slot
        if len(self._uses) % _PRUNE_EVERY == 0:
            # Expired keys go now and then: memory stays one entry per key of the window.
            self.prune(created_at)

    def lookup(self, owner: str | None, key: str, now: float) -> KeyUse | None:
        """The job the key names, if it was created within the window before `now`."""
        use = self._uses.get((owner, key))
        if use is None or now - use.created_at > self.window_seconds:
            return None
        return use

    def forget_job(self, job_id: str) -> None:
        """The job was deleted: its key may be used again."""
        slot = self._by_job.pop(job_id, None)
        if slot is not None and self._uses.get(slot, None) is not None:
            if self._uses[slot].job_id == job_id:
                del self._uses[slot]

    def prune(self, now: float) -> int:
        """Forget uses older than the window; returns how many."""
        old = [s for s, u in self._uses.items() if now - u.created_at > self.window_seconds]
        for slot in old:
            self._by_job.pop(self._uses.pop(slot).job_id, None)
        return len(old)

    def lock(self, owner: str | None, key: str) -> asyncio.Lock:
        """One submit per key at a time on this instance (a client's retry that overlaps
        its first attempt waits for it, then finds its job)."""
        slot = (owner, key)
        lock = self._locks.get(slot)
        if lock is None:
            lock = self._locks[slot] = asyncio.Lock()
        return lock

    def unlock(self, owner: str | None, key: str) -> None:
        """Drop the key's lock when nobody holds or waits for it."""
        slot = (owner, key)
        lock = self._locks.get(slot)
        if lock is not None and not lock.locked():
            del self._locks[slot]
