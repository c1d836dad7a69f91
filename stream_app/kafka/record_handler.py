"""What the process agent does with each record of `batch.records`: exactly one outcome on
`batch.results`, whatever is thrown.

One reader fills the look-ahead (stream_app.kafka.lookahead); BATCH_MAX_CONCURRENT_LLM_CALLS
call slots take records in the scheduler's order, so acknowledgements come out of offset
order. A record is acknowledged (and so may be committed) only once its outcome has been
handed to the producer: Faust acknowledges the current event even when an agent is
cancelled mid-way (at stop), which would commit a record that never got its result.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import cast

import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT, TableT
from faust.types.tuples import Message
from pydantic import ValidationError

from schemas import RecordEvent, ResultEvent
from stream_app.core.exceptions import JobNeverAnnounced, first_line
from stream_app.core.logs import get_logger
from stream_app.core.metrics import WorkerMetrics
from stream_app.core.settings import Settings
from stream_app.jobs.aggregation import JobLedger, result_key
from stream_app.jobs.cancellation import (
    CancelledBeforeCall,
    CancelledJobs,
    RecordScope,
    RevokedBeforeCall,
    record_scope,
    skipped_outcome,
)
from stream_app.jobs.deletion import DeletedJobs
from stream_app.jobs.job_rules import JobRules
from stream_app.jobs.processing import IntakeGate, RecordProcessor
from stream_app.jobs.scheduler import Ticket, record_cost, ticket_for
from stream_app.kafka.batch_lane import BatchLane
from stream_app.kafka.lookahead import LookAhead
from stream_app.kafka.messages import (
    DeadLetters,
    dump,
    job_and_index,
    payload,
    retry_round,
    scheduling_fields,
    validation_summary,
)
from stream_app.provider.answers import redact
from stream_app.provider.usage import Usage

log = get_logger(__name__)


class RecordHandler:
    """The process agent's logic: schedule, judge (cancelled? capped? announced?), call
    Claude through the processor, send the outcome. `outcomes_sent` counts the outcomes this
    worker sent (new or re-sent known ones): the worker's progress."""

    def __init__(
        self,
        settings: Settings,
        *,
        processor: RecordProcessor,
        rules: JobRules,
        gate: IntakeGate,
        cancelled: CancelledJobs,
        processed: TableT,
        results_topic: faust.TopicT,
        ledger: JobLedger,
        metrics: WorkerMetrics,
        dead_letters: DeadLetters,
        is_current: Callable[[Message], bool],
        deleted: DeletedJobs | None = None,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._rules = rules
        self._gate = gate
        self._cancelled = cancelled
        # Keyed like batch.records and written here, so co-partitioned with it: a
        # redelivered record whose outcome is already known is not sent to Claude again.
        self._processed = processed
        self._results = results_topic
        self._ledger = ledger
        self._metrics = metrics
        self._dead_letters = dead_letters
        # Whether a message was fetched in its partition's current ownership term (no
        # rebalance begun since): stream_app.kafka.faust_fixes.is_current.
        self._is_current = is_current
        # Records between their admission and their outcome's send (their scopes say
        # whether a call is with the provider now), and those answered whose outcome is
        # being sent: a revoke lets both finish first.
        self._calling: set[RecordScope] = set()
        self._answered: set[RecordScope] = set()
        self._deleted = deleted if deleted is not None else DeletedJobs()
        # Records this worker is processing now, by key. The consumer can deliver a record
        # again while its first copy is still with Claude (it re-reads from the last
        # committed offset, e.g. when a restarted worker's fetch is reset after table
        # recovery); the copy then waits for that outcome instead of paying a second call.
        self._running: dict[str, asyncio.Future[None]] = {}
        # topic -> the stream that reads it, which acknowledges its records.
        self._streams: dict[str, faust.StreamT[bytes]] = {}
        self.outcomes_sent = 0
        # Records of batch-lane jobs are handed to it instead of calling Claude here.
        self.lane: BatchLane | None = None

    async def serve(
        self, stream: faust.StreamT[bytes], lookahead: LookAhead[EventT], lane: str
    ) -> None:
        """Read the agent's stream into the look-ahead's `lane` and run the worker's call
        slots (on the records of every lane) until the agent stops."""
        events = self._acknowledged_by(stream)
        await lookahead.serve(
            events,
            self.ticket,
            self.handle_event,
            slots=self._settings.batch_max_concurrent_llm_calls,
            lane=lane,
        )

    async def feed(
        self, stream: faust.StreamT[bytes], lookahead: LookAhead[EventT], lane: str
    ) -> None:
        """Read another record topic's agent stream into the look-ahead's `lane` until the
        agent stops; `serve`'s call slots handle its records."""
        await lookahead.feed(self._acknowledged_by(stream), self.ticket, lane)

    def _acknowledged_by(self, stream: faust.StreamT[bytes]) -> AsyncIterator[EventT]:
        # Records are acknowledged one by one once their outcome is sent, by the stream
        # that read them (each record topic has its agent and stream).
        manual = cast(faust.Stream[bytes], stream).noack()
        for topic in cast(faust.TopicT, stream.channel).topics:
            self._streams[topic] = manual
        if self.lane is not None:
            # Records of batch-lane jobs are handed over beside the call slots.
            return self.lane.divert(manual.events(), self.handle_event)
        return manual.events()

    async def handle_event(self, event: EventT) -> None:
        """One call slot's work on one record; acknowledges it once it has an outcome."""
        if not self._is_current(event.message):
            # Read before a rebalance began: Kafka delivers it again to its partition's owner.
            return
        # Table writes go to the changelog partition of the event being processed, which
        # Faust reads from a context variable that its stream sets in the reader's task
        # only; each call slot is a task of its own (faust/streams.py, current_event).
        _current_event.set(weakref.ref(event))
        try:
            done = await self.process_one(event)
        except RevokedBeforeCall:
            # Its partition was revoked before its call started: no call, no outcome, no
            # ack; Kafka delivers it again to the partition's owner.
            log.debug(
                "record of a revoked partition left for its owner",
                partition=event.message.partition,
                offset=event.message.offset,
            )
            return
        if done:
            await self._streams[event.message.topic].ack(event)

    async def finish_calls(self, timeout: float) -> int:
        """Wait up to `timeout` seconds until every record whose call is with the provider
        now has sent its outcome (at a revoke: so that its outcome and its
        processed-records entry are written while the partition is still this worker's,
        and its next owner does not pay for it again). Records that have not called yet do
        not hold it (their first call is refused once the revoke began: RevokedBeforeCall),
        nor do records waiting to retry. Returns how many were still calling."""
        deadline = time.monotonic() + timeout
        while True:
            calling = len(self._answered) + sum(1 for scope in self._calling if scope.sending > 0)
            if not calling or time.monotonic() >= deadline:
                return calling
            await asyncio.sleep(0.05)

    def ticket(self, event: EventT) -> tuple[Ticket, int]:
        """Who the record belongs to for the scheduler, and its size in bytes."""
        s = self._settings
        budget = self._processor.budget
        value = event.message.value if isinstance(event.message.value, bytes) else b""
        job_id, owner, priority = scheduling_fields(value)
        cost = record_cost(
            len(value),
            requests_per_minute=budget.requests_per_minute,
            input_tokens_per_minute=s.claude_input_tokens_per_minute,
            output_tokens_per_minute=s.claude_output_tokens_per_minute,
            output_tokens_estimate=budget.estimate_output_tokens(s.claude_max_tokens),
        )
        return ticket_for(job_id, owner, priority, self._rules, cost), len(value)

    async def process_one(self, event: EventT) -> bool:
        """The record's boundary: whatever goes wrong, the record gets an outcome (the
        processor already turns its own failures into one; this catches the rest). False
        only when not even a failed outcome could be sent: the record then stays
        unacknowledged, and its job shows as stalled."""
        try:
            await self._handle(event)
            return True
        except Exception as exc:
            log.exception(
                "internal error at a record's boundary",
                topic=event.message.topic,
                partition=event.message.partition,
                offset=event.message.offset,
            )
            error = f"internal error: {type(exc).__name__}: {redact(first_line(exc))}"
        try:
            ident = job_and_index(payload(event))
            if ident is None:
                await self._dead_letters.send(event, error)
                return True
            failed = ResultEvent(
                job_id=ident[0],
                index=ident[1],
                success=False,
                error=error,
                finished_at=time.time(),
                retry=retry_round(payload(event)),
            )
            await self.send_outcome(result_key(*ident), failed)
            return True
        except Exception:
            log.exception("could not send the failed outcome; the record stays unacknowledged")
            return False

    async def _handle(self, event: EventT) -> None:
        record = await self._parse(event)
        if record is None:
            return
        key = result_key(record.job_id, record.index)
        first = self._running.get(key)
        if first is not None and self._known(key, record) is None:
            await asyncio.wait([first])  # returns also when the first copy was cancelled
        known = self._known(key, record)
        if known is not None:
            # Redelivered after a crash: re-send the known outcome (the aggregate agent
            # drops duplicates) instead of paying for the call again.
            log.info("record already processed", job=record.job_id, index=record.index)
            await self._results.send(key=record.job_id.encode(), value=orjson.dumps(known))
            self.outcomes_sent += 1
            return
        # Registered before any wait, so a redelivered copy waits for this one's outcome.
        done = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            await self._decide(event, record, key)
        finally:
            self._rules.release(record)  # a reservation of a record that got no outcome
            if self._running.get(key) is done:
                del self._running[key]
            if not done.done():
                done.set_result(None)

    def _known(self, key: str, record: RecordEvent) -> dict[str, object] | None:
        """The record's outcome already sent, unless this copy is a later retry round
        (POST .../retry sends a record again: its new outcome must be made, not re-sent)."""
        known: dict[str, object] | None = self._processed.get(key)
        if known is None:
            return None
        sent_round = known.get("retry") or 0
        assert isinstance(sent_round, int)
        return known if sent_round >= (record.retry or 0) else None

    async def _decide(self, event: EventT, record: RecordEvent, key: str) -> None:
        def stamped(result: ResultEvent) -> ResultEvent:
            # The retry round it answers, and where the record sits (a retry reads it back).
            return result.model_copy(
                update={
                    "retry": record.retry,
                    "record_partition": event.message.partition,
                    "record_offset": event.message.offset,
                }
            )

        await self._outcome_of(event, record, key, stamped)

    async def _outcome_of(
        self,
        event: EventT,
        record: RecordEvent,
        key: str,
        stamped: Callable[[ResultEvent], ResultEvent],
    ) -> None:
        if await self._cancelled.should_skip(record.job_id):
            await self.send_outcome(key, stamped(skipped_outcome(record)))
            return
        # The job's task, or the outcome without a call (its spending cap was reached).
        try:
            task = await self._rules.admit(record)
        except JobNeverAnnounced as exc:
            # Its submit failed halfway: the job does not exist, nothing is paid.
            await self._dead_letters.send(event, str(exc))
            return
        if isinstance(task, ResultEvent):
            await self.send_outcome(key, stamped(task))
            return
        if self.lane is not None and self.lane.takes(record):
            await self.lane.hand_over(record, event.message.partition, event.message.offset)
            return
        await self._gate.admit()
        async with self._gate.in_flight():
            scope: RecordScope | None = None
            try:
                try:
                    with record_scope(
                        record.job_id, still_ours=lambda: self._is_current(event.message)
                    ) as scope:
                        self._calling.add(scope)
                        result = await self._processor.process(record, task)
                except CancelledBeforeCall:
                    # Its job was cancelled while it waited for the rate budget.
                    result = skipped_outcome(record)
                if scope is not None:
                    self._answered.add(scope)
                await self.send_outcome(key, stamped(result))
            finally:
                if scope is not None:
                    self._calling.discard(scope)
                    self._answered.discard(scope)

    async def send_outcome(self, key: str, result: ResultEvent) -> None:
        """Remember the outcome (processed-records table), produce it to `batch.results`,
        settle its spend, count it in the metrics (priced as the job's status prices it)."""
        outcome = result.model_dump(mode="json", exclude_none=True)
        if result.job_id not in self._deleted:
            # (A deleted job's entries were removed: a call in flight at the deletion does
            # not write one back; its outcome is dropped by the aggregate agent.)
            self._processed[key] = outcome
        await self._results.send(key=result.job_id.encode(), value=orjson.dumps(outcome))
        self._rules.settle(result)
        self.outcomes_sent += 1
        cost = self._ledger.price_for(result).cost_of(Usage.of(result))
        self._metrics.outcome(result, cost)

    async def _parse(self, event: EventT) -> RecordEvent | None:
        try:
            return RecordEvent.model_validate_json(payload(event))
        except ValidationError as exc:
            reason = f"invalid record event: {validation_summary(exc)}"
        await self._dead_letters.send(event, reason)
        # A record that names its job and index still gets an outcome, so the job completes.
        ident = job_and_index(payload(event))
        if ident is not None:
            failed = ResultEvent(
                job_id=ident[0],
                index=ident[1],
                success=False,
                error=reason,
                finished_at=time.time(),
            )
            await self._results.send(key=ident[0].encode(), value=dump(failed))
        return None
