"""The `batch.spend` topic: every worker appends its reservations, settlements and releases
to it and folds all of it, in each partition's order, into its `SpendLedgers`
(`stream_app.jobs.spend_ledger` has the rule and why this holds a cap across workers).

Entries are keyed by ledger (`job:<id>`, `tenant:<name>:<month>`), so one ledger's entries
are in one partition, in one order. A reservation is answered when its own entry is read
back: every worker reaches the same verdict on it from the same entries, so the requester
needs no one's answer. The topic keeps entries for 40 days (a calendar month's budget and
a margin); a worker reads it from the beginning at start, with a consumer outside the
consumer group (it reads every partition, as the jobs reader does).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from decimal import Decimal

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_app.core.logs import get_logger
from stream_app.jobs.spend_ledger import Entry, SpendLedgers, Verdict
from stream_app.kafka.groupless import (
    FoldReader,
    assign_from_start,
    every_partition,
    groupless_consumer,
)

log = get_logger(__name__)

SPEND_TOPIC_CONFIG: Mapping[str, str] = {
    "cleanup.policy": "delete",
    "retention.ms": str(40 * 24 * 3600 * 1000),
}
# A reservation told to wait asks again when its ledger changes, or after this long (a
# reservation of a worker that died expires by the log's time, which moves only with
# new entries).
_WAIT_RECHECK_SECONDS = 5.0


class SpendLog:
    """Appends spend entries to `topic` and folds every entry of it into `ledgers`."""

    def __init__(
        self, bootstrap_servers: str, topic: str, partitions: int, ledgers: SpendLedgers
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._partitions = partitions
        self.ledgers = ledgers
        self._pending: dict[str, asyncio.Future[Verdict]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._producer: AIOKafkaProducer | None = None
        # After a broker error: read again from the beginning, into empty ledgers.
        self._reader = FoldReader("batch.spend reader", self._read, self.ledgers.clear)
        self._sends: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the producer (idempotent where the broker supports it) and the reader."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True
        )
        try:
            await producer.start()
        except KafkaError as exc:
            # Tansu answers InitProducerId with an error. Entries are idempotent by
            # themselves (a settle counts once per record id, a reservation is keyed by its
            # id), and aiokafka sends one batch per partition at a time, so order holds.
            await producer.stop()
            log.warning("spend log: the broker refuses idempotent producers", error=str(exc))
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
            await producer.start()
        self._producer = producer
        self._reader.start()

    async def stop(self) -> None:
        if self._sends:
            await asyncio.wait(self._sends, timeout=5)
        await self._reader.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def reserve(
        self,
        ledger: str,
        record: str,
        expected: Decimal,
        most: Decimal,
        limit: Decimal,
        *,
        wait: bool = True,
    ) -> Verdict:
        """ADMIT or REFUSE for a call of `record` expected to cost `expected` USD, at most
        `most`, in `ledger` whose limit is `limit`; waits (asking again) while the verdict
        is WAIT, or answers WAIT with `wait=False`. Raises the producer's KafkaError when the
        broker does not take it."""
        while True:
            changed = self._changed.setdefault(ledger, asyncio.Event())
            verdict = await self._ask(Entry("reserve", ledger, record, expected, most, limit))
            if verdict is not Verdict.WAIT or not wait:
                return verdict
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), _WAIT_RECHECK_SECONDS)

    def settle(self, ledger: str, record: str, usd: Decimal) -> None:
        """The record billed `usd` in all (appended in the background)."""
        self._append(Entry("settle", ledger, record, usd))

    def release(self, ledger: str, record: str) -> None:
        """The record made no call after all (appended in the background)."""
        self._append(Entry("release", ledger, record))

    def renew(self, ledger: str, record: str) -> None:
        """The reservation's call is still in flight (a provider batch): its TTL starts
        again at this entry's log time (appended in the background). `record`: its id, or
        `*:<token>` for every reservation whose id ends `:<token>`."""
        self._append(Entry("renew", ledger, record))

    async def _ask(self, entry: Entry) -> Verdict:
        request = uuid.uuid4().hex
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        try:
            await self._send(Entry(**{**entry.__dict__, "request": request}))
            return await future
        finally:
            self._pending.pop(request, None)

    def _append(self, entry: Entry) -> None:
        task = asyncio.create_task(self._send_logged(entry))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_logged(self, entry: Entry) -> None:
        try:
            await self._send(entry)
        except Exception as exc:  # the broker's errors: the reservation expires instead
            log.error(
                "spend entry not written", ledger=entry.ledger, kind=entry.kind, reason=str(exc)
            )

    async def _send(self, entry: Entry) -> None:
        assert self._producer is not None, "SpendLog.start() first"
        await self._producer.send_and_wait(
            self._topic, orjson.dumps(entry.to_json()), key=entry.ledger.encode()
        )

    async def _read(self) -> None:
        async with groupless_consumer(self._bootstrap, batched=True) as consumer:
            await assign_from_start(consumer, every_partition([self._topic], self._partitions))
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for message in messages:
                        self._fold(message.value, message.timestamp / 1000)

    def _fold(self, value: bytes | None, log_time: float) -> None:
        try:
            entry = Entry.from_json(orjson.loads(value or b""))
        except (orjson.JSONDecodeError, KeyError, ValueError, ArithmeticError, TypeError):
            log.warning("unreadable batch.spend entry skipped")
            return
        verdict = self.ledgers.apply(entry, log_time)
        if verdict is not None:
            future = self._pending.get(entry.request)
            if future is not None and not future.done():
                future.set_result(verdict)
        elif entry.kind != "renew":  # a renewal frees nothing: no one asks again
            changed = self._changed.pop(entry.ledger, None)
            if changed is not None:
                changed.set()
