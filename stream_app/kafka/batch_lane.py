"""The batch lane on Kafka: records of batch-lane jobs go through the provider's Message
Batches API instead of one live call each, and their outcomes reach `batch.results` as
ordinary result events, as each provider batch ends.

How a record travels:
1. The process agent does not call Claude for it: it hands the record over to the lane
   topic (`<batch.records>.lane`, keyed by job_id, so every record of a job reaches one
   worker) and acknowledges it (`BatchLane.hand_over`). Records that say they are of a
   batch-lane job (`lane: "batch"`, set at submit) or whose job is known to be one do not
   wait for a call slot: the reader hands them over at once (`BatchLane.divert`), so the
   live lane's pace does not hold them back.
2. The lane agent gathers a job's records and cuts a provider batch when
   BATCH_LANE_MAX_REQUESTS wait (or the provider's 100,000 / 256 MB), when the job's last
   record has arrived, when none joined for BATCH_LANE_WINDOW_SECONDS, or when the oldest
   waited BATCH_LANE_MAX_WAIT_SECONDS (stream_app.jobs.batch_grouping): a few large batches
   for a big job, a small job's records in one batch at once.
3. Paid once through crashes: before the create, the batch's intent (its record indexes,
   when it was asked for) is written to the changelog-backed `provider-batches` table and
   flushed; after the create, its id. The lane's records stay unacknowledged until their
   outcomes are produced, so after a crash or a rebalance they come again to whichever
   worker owns the job's partition, which reads the table: a batch with an id is polled
   again; an intent without one means the worker died around the create, so it adopts the
   provider batch created since then with as many requests (cancelling any duplicate), or,
   when there is none, batches the records anew.
4. The batch is polled with backoff; once it ends its results are streamed and each item
   is read by the live lane's rules (stream_app.provider.batches, stream_app.jobs.
   batch_outcomes): a result, or another try (a later batch through the lane topic, or the
   live lane through `batch.records`). Then the batch is marked done and its records
   acknowledged.

A job with a `deadline` keeps its records in provider batches (the cheaper lane) until the
live lane would need all the time left to do them (stream_app.jobs.lanes.must_go_live):
then its provider batches are cancelled, what they answered is kept (and paid once), and
the rest, with the records not yet batched, go to the live lane.

Cancelling a job cancels its provider batches (requests already answered are recorded and
paid, the rest skipped) and skips its records not yet in one. A job with a spending cap
reserves each record's expected cost at batch rates before its batch is created; records
that would pass the cap are skipped (`budget_exhausted`). The reservations are renewed while
the batch runs (every third of BATCH_SPEND_RESERVATION_TTL_SECONDS), by whichever worker
follows it: the intent names them, so a worker that takes a batch over keeps and settles
them. A batch that has not ended
BATCH_LANE_GIVE_UP_SECONDS (an hour) past the provider's expiry is cancelled and its
unanswered items go again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic
import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT, TableT
from pydantic import ValidationError

from schemas import RecordEvent, ResultEvent
from stream_app.core.exceptions import InsightStreamError
from stream_app.core.logs import get_logger
from stream_app.core.metrics import WorkerMetrics
from stream_app.core.settings import Settings
from stream_app.jobs.aggregation import JobLedger, result_key
from stream_app.jobs.batch_grouping import Gathered, GroupingRule
from stream_app.jobs.batch_outcomes import LaneItem, Produce, TryAgain, next_step
from stream_app.jobs.cancellation import CancelledJobs, skipped_outcome
from stream_app.jobs.job_rules import BUDGET_SKIPPED_ERROR, JobRules
from stream_app.jobs.lanes import LiveQueue, must_go_live
from stream_app.jobs.spend_ledger import Verdict
from stream_app.kafka.faust_app import make_table, raw_topic
from stream_app.kafka.messages import DeadLetters, dump, payload, validation_summary
from stream_app.provider.batches import (
    MAX_BATCH_BYTES,
    MAX_BATCH_REQUESTS,
    BatchClient,
    ItemSkipped,
    batch_request,
    custom_id,
    read_item,
    record_index,
    request_bytes,
)
from stream_app.provider.request import PreparedTask

log = get_logger(__name__)

LANE_TABLE = "provider-batches"
# How long before its intent a provider batch may have been created and still be adopted
# (clocks of the worker and the provider differ a little).
ADOPT_SLACK_SECONDS = 60.0
# How long a batch found after a restart waits for its records to come again.
REJOIN_SECONDS = 30.0
# Records of batch-lane jobs handed over at once by the process agent's reader, beside
# the call slots (a hand-over is one produce, awaited).
HAND_OVER_CONCURRENCY = 4
# The pace at which one provider batch's results are produced to batch.results.
RESULTS_PER_SECOND = 100.0
# A capped job's batch-rate reservations in flight at once while a provider batch is built
# (each is a round trip through `batch.spend`).
RESERVE_AT_ONCE = 32


def lane_topic_name(settings: Settings) -> str:
    """The lane topic: named after batch.records, so every deployment has its own."""
    return f"{settings.topic_records}.lane"


@dataclass
class _Waiting:
    """One record in the lane: what it carries and its deliveries still unacknowledged."""

    item: LaneItem
    events: list[EventT]
    since: float


@dataclass
class _Batch:
    key: str
    indexes: list[int]
    members: dict[int, _Waiting] = field(default_factory=dict)
    batch_id: str | None = None
    created_at: float = 0.0
    task: asyncio.Task[None] | None = None
    # Its outcomes are produced and its records being acknowledged.
    closing: bool = False
    # Its requests' spend reservations: their ids end with `spend_token`; {ledger:
    # [index, ...]} (none for a job without a cap or budget). Renewed while it runs.
    spend_token: str = ""
    spend_ledgers: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Job:
    job_id: str
    anchor: EventT  # any event of the job: table writes go to its partition
    buffer: dict[int, _Waiting] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    flusher: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set when a record joins the buffer that makes the gathered records due at once.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # When the newest record joined the buffer (Unix seconds).
    last_added: float = 0.0
    # Indexes of the job's first-round records that reached the lane (a retry round's do
    # not count), and items this worker sent to a later batch that have not come back
    # ((index, tries)); `resending`: batches whose items are being sent again now.
    seen: set[int] = field(default_factory=set)
    expected: set[tuple[int, int]] = field(default_factory=set)
    resending: int = 0
    # The job's last record arrived: what waits now is cut without waiting for a window
    # (until the buffer is empty); `fired`: that moment was acted on.
    last_arrived: bool = False
    fired: bool = False
    # The (retry round, try) of each index whose batch is done (the table's, kept here:
    # reading the job's table value for every record would decode all its batches each time).
    done_tries: dict[int, tuple[int, int]] = field(default_factory=dict)


class BatchLane:
    """The lane agent's logic and the hand-over from the process agent."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: BatchClient,
        rules: JobRules,
        cancelled: CancelledJobs,
        table: TableT,
        lane_topic: faust.TopicT,
        records_topic: faust.TopicT,
        results_topic: faust.TopicT,
        ledger: JobLedger,
        metrics: WorkerMetrics,
        dead_letters: DeadLetters,
        flush: Callable[[], Any],
        live_ahead: Callable[[str], LiveQueue] | None = None,
        read_back: Callable[[str, dict[int, tuple[int, int]]], Awaitable[dict[int, bytes]]]
        | None = None,
    ) -> None:
        self._s = settings
        # job_id, {index: (partition, offset)} -> {index: the record message}: the job's
        # records read back from their records topic (Pipeline.read_job_records).
        self._read_back = read_back
        # The live records of other jobs waiting on this worker (a deadline move counts them).
        self._live_ahead = live_ahead or (lambda job_id: LiveQueue(0, 0))
        self._client = client
        self._rules = rules
        self._cancelled = cancelled
        self._table = table
        self._lane_topic = lane_topic
        self._records_topic = records_topic
        self._results_topic = results_topic
        self._ledger = ledger
        self._metrics = metrics
        self._dead_letters = dead_letters
        self._flush_producer = flush
        self._jobs: dict[str, _Job] = {}
        self._stream: Any = None
        self._grouping = GroupingRule(
            max_requests=min(settings.batch_lane_max_requests, MAX_BATCH_REQUESTS),
            quiet_seconds=settings.batch_lane_window_seconds,
            max_wait_seconds=settings.batch_lane_max_wait_seconds,
        )
        # Outcomes this lane produced, and records handed over to it: the worker's progress
        # (the stall watch reads it: a batch-lane record makes no call in the process agent).
        self.outcomes_sent = 0
        self.handed_over = 0

    # -- the process agent's side -----------------------------------------------------

    def takes(self, record: RecordEvent) -> bool:
        """Whether the record goes to the batch lane: it says so (`lane`), or its job's lane
        is `batch`, or the job named none and BATCH_DEFAULT_LANE is `batch`; never one sent
        back to the live lane."""
        if record.lane is not None:
            return record.lane == "batch"
        lane = self._rules.lane_of(record.job_id)
        return lane == "batch" or (lane is None and self._s.batch_default_lane == "batch")

    async def divert(
        self, events: AsyncIterator[EventT], handle: Callable[[EventT], Awaitable[None]]
    ) -> AsyncIterator[EventT]:
        """The process agent's records with those of known batch-lane jobs taken out:
        each of those is handled (`handle`: the process agent's own handling, which hands
        it over here and acknowledges it) at once, HAND_OVER_CONCURRENCY at a time, instead
        of waiting for a call slot: slots held by live records waiting for the request
        budget would otherwise let batch-lane records through only at the live lane's
        pace. The rest (and records of jobs whose lane is not known yet) are yielded."""
        pool = asyncio.Semaphore(HAND_OVER_CONCURRENCY)
        running: set[asyncio.Task[None]] = set()

        async def one(event: EventT) -> None:
            try:
                await handle(event)
            finally:
                pool.release()

        try:
            async for event in events:
                value = event.message.value
                if not (isinstance(value, bytes) and self._diverted(value)):
                    yield event
                    continue
                await pool.acquire()
                task = asyncio.create_task(one(event))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    def _diverted(self, value: bytes) -> bool:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict) or data.get("lane") == "live":
            return False
        if data.get("lane") == "batch":
            return True
        job_id = data.get("job_id")
        return isinstance(job_id, str) and self._rules.lane_of(job_id) == "batch"

    async def hand_over(
        self, record: RecordEvent, partition: int | None = None, offset: int | None = None
    ) -> None:
        """Put the record on the lane topic (awaiting the broker's acknowledgement, so the
        process agent may acknowledge it then), with where it sits on batch.records
        (`partition`, `offset`: its outcome carries them, so a retry can read it back). The
        lane reserves its cost at the batch rates when it cuts the record's provider batch."""
        await self._send_item(
            LaneItem(record=record, record_partition=partition, record_offset=offset)
        )
        self.handed_over += 1

    # -- the lane agent -------------------------------------------------------------------

    async def serve(self, stream: faust.StreamT[bytes]) -> None:
        manual = cast(faust.Stream[bytes], stream).noack()
        self._stream = manual
        renewer = asyncio.create_task(self._renew_loop(), name="batch-lane-spend-renewals")
        try:
            async for event in manual.events():
                try:
                    await self._take(event)
                except Exception:
                    log.exception("batch lane: internal error taking a record")
                    await self._ack([event])
        finally:
            renewer.cancel()

    async def _renew_loop(self) -> None:
        """Keep the spend reservations of the provider batches in flight here: one `renew`
        entry per batch and ledger every third of BATCH_SPEND_RESERVATION_TTL_SECONDS (a
        provider batch runs for up to 24 hours; a reservation lapses one TTL after its
        last renewal, so a dead worker's does not hold its ledger for good)."""
        interval = self._s.batch_spend_reservation_ttl_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                self._renew_all()
            except Exception:
                log.exception("batch lane: renewing spend reservations failed")

    def _renew_all(self) -> None:
        for job in list(self._jobs.values()):
            for batch in list(job.batches.values()):
                if batch.spend_token and batch.spend_ledgers:
                    self._rules.renew_batch(batch.spend_token, list(batch.spend_ledgers))

    def assigned(self, partitions: set[int]) -> None:
        """A rebalance ended; `partitions`: the lane topic's partitions this worker owns now.
        Jobs on the others are forgotten (their records come again, unacknowledged, to
        their new owner, which resumes from the table); the rest carry on: their records
        come again from the committed offset and join what is held already."""
        for job_id, job in list(self._jobs.items()):
            if job.anchor.message.partition in partitions:
                continue
            if job.flusher is not None and not job.lock.locked():
                # A create in flight is not cut short (its batch would be paid and unknown).
                job.flusher.cancel()
            for batch in job.batches.values():
                if batch.task is not None:
                    batch.task.cancel()
            del self._jobs[job_id]

    def provider_batches(self, job_id: str) -> list[dict[str, Any]]:
        """The job's provider batches as the table holds them: `id`, `processing_status`
        (`in_progress`, `canceling`, `ended`), `request_counts` (the provider's), and a
        `note` when the lane ended it otherwise (lost at the provider, cancelled to make
        the deadline). A batch the lane is done with reads `ended` whatever the provider
        last said (the status shows them)."""
        stored = self._table.get(job_id) or {}
        shown = []
        for entry in (stored.get("batches") or {}).values():
            if entry.get("id"):
                done = entry.get("state") == "done"
                view = {
                    "id": entry["id"],
                    "processing_status": "ended"
                    if done
                    else entry.get("processing_status", "in_progress"),
                    "request_counts": entry.get("request_counts")
                    or {"processing": len(entry.get("indexes", []))},
                }
                if entry.get("note"):
                    view["note"] = entry["note"]
                shown.append(view)
        return shown

    def moved_live(self, job_id: str) -> int:
        """How many of the job's records the lane sent to the live lane to make its
        deadline (records)."""
        stored = self._table.get(job_id) or {}
        return len(stored.get("moved_live") or ())

    async def _take(self, event: EventT) -> None:
        try:
            item = LaneItem.model_validate_json(payload(event))
        except ValidationError as exc:
            await self._dead_letters.send(event, f"invalid lane item: {validation_summary(exc)}")
            await self._ack([event])
            return
        record = item.record
        job = await self._job(record.job_id, event)
        self._arrived(job, item)
        try:
            await self._place(job, event, item)
        finally:
            if job.last_arrived and job.buffer:
                job.wake.set()
            if job.buffer and (job.flusher is None or job.flusher.done()):
                job.flusher = asyncio.create_task(self._flush_loop(job))

    def _arrived(self, job: _Job, item: LaneItem) -> None:
        """Count the item in; note the moment the job's last record has arrived (every
        first-round record seen, every item sent again back)."""
        record = item.record
        if not record.retry:
            job.seen.add(record.index)
        elif not item.tries:
            # A retry round's record: how many the round holds is not known here, so its
            # arrival never makes the job complete; the round is cut when no record has
            # joined for BATCH_LANE_WINDOW_SECONDS (each record its own batch before).
            return
        job.expected.discard((record.index, item.tries))
        self._check_complete(job)

    def _check_complete(self, job: _Job) -> None:
        total = self._rules.total_of(job.job_id)
        complete = (
            total is not None and len(job.seen) >= total and not job.expected and not job.resending
        )
        if complete and not job.fired:
            job.fired = job.last_arrived = True
            if job.buffer:
                job.wake.set()
        elif not complete:
            job.fired = False

    async def _place(self, job: _Job, event: EventT, item: LaneItem) -> None:
        """The item joins its provider batch (one found again after a restart), the
        job's buffer, or is acknowledged at once (its outcome is already out)."""
        record = item.record
        index = record.index
        for batch in job.batches.values():
            if index in batch.indexes:
                waiting = batch.members.get(index)
                if batch.closing:
                    if waiting is not None and _order(item) > _order(waiting.item):
                        break  # its next try: batched below
                    await self._ack([event])
                    return
                if waiting is None:
                    batch.members[index] = _Waiting(item, [event], time.time())
                elif _order(item) > _order(waiting.item):
                    # A later try of a record this batch already answered: wait for it.
                    break
                else:
                    waiting.events.append(event)
                return
        if self._done(job, index, item):
            await self._ack([event])
            return
        waiting = job.buffer.get(index)
        if waiting is not None:
            waiting.events.append(event)
            if _order(item) > _order(waiting.item):
                waiting.item = item
            return
        job.last_added = time.time()
        job.buffer[index] = _Waiting(item, [event], job.last_added)
        if len(job.buffer) >= self._grouping.max_requests:
            job.wake.set()

    def _done(self, job: _Job, index: int, item: LaneItem) -> bool:
        """Whether this delivery's outcome (or its next try) was already produced: a done
        batch of the table holds the index at this retry round and try, or a later one."""
        done = job.done_tries.get(index)
        return done is not None and done >= _order(item)

    def _mark_done(self, job: _Job, batch: _Batch) -> None:
        """The batch's entry is done (its outcomes and next tries are produced)."""
        self._write(job, batch.key, {"state": "done", "spend": None}, merge=True)
        stored = self._table.get(job.job_id) or {}
        entry = (stored.get("batches") or {}).get(batch.key) or {}
        _note_done(job, entry)

    async def _job(self, job_id: str, event: EventT) -> _Job:
        job = self._jobs.get(job_id)
        if job is not None:
            job.anchor = event
            return job
        job = self._jobs[job_id] = _Job(job_id, event)
        await self._resume(job)
        return job

    async def _resume(self, job: _Job) -> None:
        """Pick up the job's batches the table holds that are not done (after a restart or
        a rebalance): poll those with an id; adopt or drop those with only an intent."""
        stored = self._table.get(job.job_id) or {}
        for key, entry in sorted((stored.get("batches") or {}).items()):
            state = entry.get("state")
            if state == "done":
                # Their records do not come again (or come as later tries).
                job.seen.update(int(i) for i in entry.get("indexes", []))
                _note_done(job, entry)
            if state not in ("intent", "created"):
                continue
            batch = _Batch(key, list(entry.get("indexes", [])))
            spend = entry.get("spend") or {}
            batch.spend_token = str(spend.get("token") or "")
            batch.spend_ledgers = {
                str(ledger): list(batch.indexes) if held == "all" else [int(i) for i in held]
                for ledger, held in (spend.get("ledgers") or {}).items()
            }
            if batch.spend_token:
                # Its requests' reservations are this worker's now: kept (renewed at once:
                # the worker that made them may have died a while ago), settled here.
                self._rules.adopt_batch_reservations(
                    job.job_id, batch.spend_token, batch.spend_ledgers
                )
                self._rules.renew_batch(batch.spend_token, list(batch.spend_ledgers))
            if state == "intent":
                adopted = await self._adopt(job, entry)
                if adopted is None:
                    self._write(job, key, {**entry, "state": "abandoned"})
                    for index in batch.indexes:  # no call was made: the reservations go
                        self._rules.release_batch_request(job.job_id, index)
                    log.info("batch lane: no provider batch behind an intent", job=job.job_id)
                    continue
                batch.batch_id, batch.created_at = adopted
                self._write(job, key, {**entry, "state": "created", "id": adopted[0]})
                await self._durable()
            else:
                batch.batch_id, batch.created_at = entry["id"], entry.get("created_at", 0.0)
            job.batches[key] = batch
            log.info("batch lane: resumed a provider batch", job=job.job_id, batch=batch.batch_id)
            batch.task = asyncio.create_task(self._follow(job, batch, rejoin=True))

    async def _adopt(self, job: _Job, entry: dict[str, Any]) -> tuple[str, float] | None:
        """The provider batch created for this intent, if the create went through: the
        oldest created since the intent with as many requests; any younger one is a
        duplicate and is cancelled."""
        since = float(entry.get("requested_at", 0.0)) - ADOPT_SLACK_SECONDS
        count = len(entry.get("indexes", []))
        taken = self._taken_ids()
        # A create still on its way (its worker lost the partition, or its answer is
        # late) shows up within the request timeout: look until then before giving up.
        patience_until = float(entry.get("requested_at", 0.0)) + self._s.claude_timeout_seconds
        while True:
            found = [b for b in await self._client.created_since(since, count) if b.id not in taken]
            if found or time.time() > patience_until:
                break
            await asyncio.sleep(1.0)
        if not found:
            return None
        for duplicate in found[1:]:
            log.warning("batch lane: cancelling a duplicate provider batch", batch=duplicate.id)
            await self._client.cancel(duplicate.id)
        log.info("batch lane: adopted the provider batch of an intent", batch=found[0].id)
        return found[0].id, found[0].created_at.timestamp()

    def _taken_ids(self) -> set[str]:
        return {
            b.batch_id for job in self._jobs.values() for b in job.batches.values() if b.batch_id
        }

    def _deadline_near(self, job: _Job) -> bool:
        """Whether the job's unfinished records must go to the live lane now to make its
        deadline (stream_app.jobs.lanes.must_go_live)."""
        deadline = self._rules.deadline_of(job.job_id)
        if deadline is None:
            return False
        unfinished = len(job.buffer) + sum(
            len(b.indexes) for b in job.batches.values() if not b.closing
        )
        return unfinished > 0 and must_go_live(
            unfinished,
            deadline=deadline,
            now=time.time(),
            requests_per_minute=self._s.claude_requests_per_minute,
            margin_seconds=self._deadline_margin(),
            live_ahead=self._live_ahead(job.job_id),
        )

    def _deadline_margin(self) -> float:
        # Two polls of a provider batch, its cancel and the results read (seconds).
        return 2 * self._s.batch_lane_poll_seconds + 5.0

    def _poll_delay(self, job: _Job, polls: int) -> float:
        """The wait before the next poll: the backoff, but short enough that a job with a
        deadline is looked at again before it must go live."""
        delay = self._client.policy.delay(polls)
        deadline = self._rules.deadline_of(job.job_id)
        if deadline is None:
            return delay
        slack = deadline - time.time() - self._deadline_margin()
        return max(self._s.batch_lane_poll_seconds, min(delay, slack / 4))

    def _gathered(self, job: _Job) -> Gathered:
        total = self._rules.total_of(job.job_id)
        return Gathered(
            waiting=len(job.buffer),
            first_at=min((w.since for w in job.buffer.values()), default=job.last_added),
            last_at=job.last_added,
            # A cancelled job's gathered records are skipped at once, a job whose deadline
            # is near sends them live at once (in `_cut_one`).
            last_arrived=job.last_arrived
            or job.job_id in self._cancelled
            or self._deadline_near(job),
            more_expected=bool(
                (total is not None and len(job.seen) < total) or job.expected or job.resending
            ),
        )

    async def _flush_loop(self, job: _Job) -> None:
        """Cut the job's gathered records into provider batches whenever the grouping rule
        says they are due, until none wait."""
        while job.buffer:
            job.wake.clear()
            wait = self._grouping.due_in(self._gathered(job), time.time())
            if wait > 0:
                try:
                    # Looked at again at least every window (a cancel is not announced here).
                    await asyncio.wait_for(
                        job.wake.wait(), min(wait, self._s.batch_lane_window_seconds)
                    )
                except TimeoutError:
                    pass
                continue
            try:
                made = await self._cut(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch lane: cutting a provider batch failed; again", job=job.job_id)
                made = False
            if not made and job.buffer:
                # A capped job waiting for its spend to settle, a failed create: later.
                await asyncio.sleep(self._s.batch_lane_window_seconds)
        job.last_arrived = False

    async def _cut(self, job: _Job) -> bool:
        """Make provider batches of what the job has gathered while the grouping rule says
        they are due; whether one was made."""
        made = False
        async with job.lock:
            while job.buffer:
                gathered = self._gathered(job)
                why = self._grouping.why(gathered, time.time())
                if not why:
                    break
                if not await self._cut_one(job, why):
                    break
                made = True
        return made

    async def _cut_one(self, job: _Job, why: str = "") -> bool:
        """One provider batch of the gathered records; False when none could be made now."""
        await self._rules.terms_known(job.job_id)
        if await self._cancelled.should_skip(job.job_id):
            await self._end_buffered(job, lambda w: skipped_outcome(w.item.record))
            return False
        if self._deadline_near(job):
            waiting_now = list(job.buffer.values())
            job.buffer.clear()
            await self._move_live(job, waiting_now)
            await self._flush_producer()
            await self._ack([e for w in waiting_now for e in w.events])
            log.info(
                "batch lane: the job's deadline is near: its records go to the live lane",
                job=job.job_id,
                records=len(waiting_now),
            )
            return False
        try:
            task = self._rules.task_of(job.job_id)
        except InsightStreamError as exc:
            reason = f"the job's task cannot be used: {exc}"
            await self._end_buffered(job, lambda w: _failed(w.item, reason))
            return False
        limit = min(self._s.batch_lane_max_requests, MAX_BATCH_REQUESTS)
        # The batch's reservations end with it (renewed by it while it runs).
        token = uuid.uuid4().hex[:12]
        candidates: list[tuple[_Waiting, dict[str, Any]]] = []
        size = 0
        for count, index in enumerate(sorted(job.buffer)):
            if count % 50 == 49:
                await asyncio.sleep(0)  # the others' turn, while a big batch is built
            if index not in job.buffer:
                continue
            waiting = job.buffer[index]
            request = batch_request(task, waiting.item.record.record.text, _cid(job, index))
            grown = size + request_bytes(request)
            if len(candidates) >= limit or grown > MAX_BATCH_BYTES - 1024:
                break
            candidates.append((waiting, request))
            size = grown
        chosen, requests = await self._reserve(job, task, token, candidates)
        if not chosen:
            return False
        for waiting in chosen:
            del job.buffer[waiting.item.record.index]
        await self._create(job, chosen, requests, why, token)
        return True

    async def _end_buffered(self, job: _Job, outcome: Callable[[_Waiting], ResultEvent]) -> None:
        """Give every record gathered now its `outcome` (skipped, failed). Each is taken out
        before its outcome is awaited: records that join the buffer meanwhile stay in it
        for the next turn."""
        for index in list(job.buffer):
            waiting = job.buffer.pop(index)
            await self._produce(job, [waiting], outcome(waiting))

    async def _reserve(
        self,
        job: _Job,
        task: PreparedTask,
        token: str,
        candidates: list[tuple[_Waiting, dict[str, Any]]],
    ) -> tuple[list[_Waiting], list[dict[str, Any]]]:
        """Reserve the candidates' requests at batch rates (a capped job's, or a budgeted
        tenant's: one `batch.spend` round trip each, RESERVE_AT_ONCE at a time, judged in
        the log's order). A refused record is skipped (`budget_exhausted`); at the first
        that must wait, the batch is cut there and the reservations made past it are
        released. The admitted ones and their requests, in order."""
        chosen: list[_Waiting] = []
        requests: list[dict[str, Any]] = []
        for start in range(0, len(candidates), RESERVE_AT_ONCE):
            chunk = candidates[start : start + RESERVE_AT_ONCE]
            verdicts = await asyncio.gather(
                *(self._rules.reserve_batch_request(w.item.record, task, token) for w, _ in chunk),
                return_exceptions=True,
            )
            failed = next((v for v in verdicts if isinstance(v, BaseException)), None)
            if failed is not None:
                # No batch is made now (tried again later): every reservation made goes.
                admitted = [
                    w for (w, _), v in zip(chunk, verdicts, strict=True) if v is Verdict.ADMIT
                ]
                for waiting in chosen + admitted:
                    self._rules.release_batch_request(job.job_id, waiting.item.record.index)
                raise failed
            cut = False
            for (waiting, request), verdict in zip(chunk, verdicts, strict=True):
                record = waiting.item.record
                if cut:
                    if verdict is Verdict.ADMIT:
                        self._rules.release_batch_request(job.job_id, record.index)
                elif verdict is Verdict.REFUSE:
                    del job.buffer[record.index]
                    await self._produce(job, [waiting], _capped(waiting.item, task))
                elif verdict is Verdict.WAIT:
                    cut = True
                else:
                    chosen.append(waiting)
                    requests.append(request)
            if cut:
                break
        return chosen, requests

    async def _create(
        self,
        job: _Job,
        chosen: list[_Waiting],
        requests: list[dict[str, Any]],
        why: str = "",
        token: str = "",
    ) -> None:
        stored = self._table.get(job.job_id) or {}
        seq = int(stored.get("seq", 0)) + 1
        key = f"b{seq:06d}"
        indexes = [w.item.record.index for w in chosen]
        ledgers = self._rules.batch_reservations(job.job_id, indexes) if token else {}
        intent: dict[str, Any] = {
            "state": "intent",
            "indexes": indexes,
            "tries": {str(w.item.record.index): w.item.tries for w in chosen},
            # The retry round of each record sent again by POST .../retry (absent: the first).
            "rounds": {
                str(w.item.record.index): w.item.record.retry for w in chosen if w.item.record.retry
            },
            # Where each record sits on its records topic: one whose lane delivery does not
            # come again after a restart is read back from there (`_rejoin`).
            "at": {
                str(w.item.record.index): [w.item.record_partition, w.item.record_offset]
                for w in chosen
                if w.item.record_partition is not None and w.item.record_offset is not None
            },
            "requested_at": time.time(),
        }
        if ledgers:
            # Whoever follows the batch after a crash keeps (renews) and settles these
            # ("all": every index of the batch, the usual case, kept short).
            intent["spend"] = {
                "token": token,
                "ledgers": {
                    ledger: "all" if held == indexes else held for ledger, held in ledgers.items()
                },
            }
        # The intent is on the broker before the create: a crash after it is found again.
        self._write(job, key, intent, seq=seq)
        await self._durable()
        batch = _Batch(key, indexes, {w.item.record.index: w for w in chosen})
        batch.spend_token, batch.spend_ledgers = token, ledgers
        job.batches[key] = batch
        try:
            created = await self._client.create(requests)
            batch.batch_id, batch.created_at = created.id, created.created_at.timestamp()
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            # The create may have gone through all the same (a lost answer): look first.
            log.warning("batch lane: create failed", job=job.job_id, error=str(exc)[:200])
            adopted = await self._adopt(job, intent) if _maybe_created(exc) else None
            if adopted is None:
                self._write(job, key, {**intent, "state": "abandoned"})
                del job.batches[key]
                for waiting in chosen:
                    job.buffer[waiting.item.record.index] = waiting
                    self._rules.release(waiting.item.record, batch_lane=True)
                await asyncio.sleep(self._s.batch_lane_poll_seconds)
                return
            batch.batch_id, batch.created_at = adopted
        self._write(
            job,
            key,
            {
                **intent,
                "state": "created",
                "id": batch.batch_id,
                "created_at": batch.created_at,
                "processing_status": "in_progress",
                "request_counts": {"processing": len(indexes)},
            },
        )
        await self._durable()
        log.info(
            "batch lane: provider batch created",
            job=job.job_id,
            batch=batch.batch_id,
            requests=len(indexes),
            cut=why,
        )
        batch.task = asyncio.create_task(self._follow(job, batch))

    async def _follow(self, job: _Job, batch: _Batch, *, rejoin: bool = False) -> None:
        """Poll the batch until it ends, then turn its results into outcomes."""
        failures = 0
        while True:
            try:
                await self._follow_inner(job, batch, rejoin=rejoin)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Its records stay unacknowledged; following it again is harmless (a result
                # produced twice is counted once).
                failures += 1
                log.exception(
                    "batch lane: following a provider batch failed; again",
                    batch=batch.batch_id,
                    failures=failures,
                )
                await asyncio.sleep(self._client.policy.delay(failures))

    async def _follow_inner(self, job: _Job, batch: _Batch, *, rejoin: bool) -> None:
        assert batch.batch_id is not None
        batch_id = batch.batch_id
        cancel_sent = given_up = moved = False
        polls = 0
        last: tuple[str, Any] | None = None
        while True:
            try:
                found = await self._client.retrieve(batch_id, batch.created_at)
            except anthropic.NotFoundError:
                log.warning("batch lane: provider batch gone; its records go again", batch=batch_id)
                self._write(
                    job,
                    batch.key,
                    {
                        "processing_status": "ended",
                        "request_counts": dict(_NO_COUNTS),
                        "note": "not found at the provider: its requests were sent again",
                    },
                    merge=True,
                )
                await self._all_again(job, batch, "the provider's batch could not be found")
                return
            except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
                log.info("batch lane: poll failed, retrying", batch=batch_id, error=str(exc)[:120])
                await asyncio.sleep(self._client.policy.delay(polls))
                polls += 1
                continue
            counts = found.request_counts.model_dump()
            if last != (found.processing_status, counts):
                last = (found.processing_status, counts)
                self._update(job, batch.key, found.processing_status, counts)
            if found.processing_status == "ended":
                break
            if not cancel_sent and job.job_id in self._cancelled:
                cancel_sent = True
                log.info("batch lane: cancelling the provider batch of a cancelled job")
                await self._client.cancel(batch_id)
            elif not cancel_sent and time.time() > (
                found.expires_at.timestamp() + self._s.batch_lane_give_up_seconds
            ):
                cancel_sent = given_up = True
                log.warning("batch lane: provider batch past its expiry: given up", batch=batch_id)
                await self._client.cancel(batch_id)
            elif not cancel_sent and self._deadline_near(job):
                cancel_sent = moved = True
                log.info(
                    "batch lane: the job's deadline is near: its provider batch is cancelled "
                    "and its unanswered records go to the live lane",
                    job=job.job_id,
                    batch=batch_id,
                )
                await self._client.cancel(batch_id)
            await asyncio.sleep(self._poll_delay(job, polls))
            polls += 1
        if rejoin:
            await self._rejoin(job, batch)
        if moved:
            self._write(
                job,
                batch.key,
                {"note": "cancelled to make the job's deadline: its unanswered requests went live"},
                merge=True,
            )
        task = self._rules.task_of(job.job_id)
        job.resending += 1
        try:
            await self._read_results(job, batch, task, given_up=given_up, moved=moved)
        finally:
            job.resending -= 1
            self._check_complete(job)
        await self._close(job, batch)
        log.info("batch lane: provider batch done", job=job.job_id, batch=batch_id)
        if not job.batches and not job.buffer:
            self._jobs.pop(job.job_id, None)

    async def _read_results(
        self, job: _Job, batch: _Batch, task: PreparedTask, *, given_up: bool, moved: bool
    ) -> None:
        """Each item's result read by the live lane's rules: its outcome, or another try;
        an item the results leave out goes again. `moved`: the batch was cancelled to make
        the job's deadline: its cancelled items go to the live lane."""
        assert batch.batch_id is not None
        seen: set[int] = set()
        moving: list[_Waiting] = []
        async for answer in self._client.results(batch.batch_id, batch.created_at):
            try:
                index = record_index(answer.custom_id)
            except ValueError:
                continue
            waiting = batch.members.get(index)
            if waiting is None or index in seen:
                continue
            seen.add(index)
            outcome = read_item(answer.result, task)
            if moved and isinstance(outcome, ItemSkipped):
                moving.append(waiting)
                continue
            step = next_step(
                waiting.item,
                outcome,
                task,
                retries=self._s.batch_record_retry_count,
                given_up=given_up,
                started=waiting.since,
            )
            await self._apply(job, waiting, step)
            # A batch's results arrive all at once: produced at most RESULTS_PER_SECOND,
            # so that their handling here and by the aggregate agent does not hold back
            # the live lane's calls on this worker (a 1,000-request batch: 10 s).
            await asyncio.sleep(1 / RESULTS_PER_SECOND)
        await self._move_live(job, moving)
        for index, waiting in batch.members.items():
            if index not in seen:
                await self._again(job, waiting, "batch", "no result for this request")

    async def _move_live(self, job: _Job, waiting: list[_Waiting]) -> None:
        """Send these records to the live lane to make the job's deadline, and note their
        indexes in the job's table value (a set: a delivery seen again counts once)."""
        if not waiting:
            return
        for one in waiting:
            await self._again(job, one, "live", "moved to make the job's deadline")
        _current_event.set(weakref.ref(job.anchor))
        stored = dict(self._table.get(job.job_id) or {})
        moved = set(stored.get("moved_live") or ())
        moved.update(one.item.record.index for one in waiting)
        stored["moved_live"] = sorted(moved)
        self._table[job.job_id] = stored

    async def _rejoin(self, job: _Job, batch: _Batch) -> None:
        """After a restart, wait (a little) for the batch's records to come again; those
        that do not are read back from their records topic at the positions the batch's
        table entry keeps, so that every record of the batch gets its outcome (answered
        or sent again) whatever became of its delivery on the lane topic."""
        deadline = time.monotonic() + REJOIN_SECONDS
        while len(batch.members) < len(batch.indexes) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        missing = [index for index in batch.indexes if index not in batch.members]
        if not missing or self._read_back is None:
            return
        entry = ((self._table.get(job.job_id) or {}).get("batches") or {}).get(batch.key) or {}
        at = entry.get("at") or {}
        positions = {i: (int(at[str(i)][0]), int(at[str(i)][1])) for i in missing if str(i) in at}
        found = await self._read_back(job.job_id, positions) if positions else {}
        tries, rounds = entry.get("tries") or {}, entry.get("rounds") or {}
        for index, value in found.items():
            if index in batch.members:
                continue  # its delivery came meanwhile
            record = RecordEvent.model_validate_json(value).model_copy(
                update={"retry": rounds.get(str(index)), "created_follows": None}
            )
            partition, offset = positions[index]
            item = LaneItem(
                record=record,
                record_partition=partition,
                record_offset=offset,
                tries=int(tries.get(str(index), 0)),
            )
            batch.members[index] = _Waiting(item, [], time.time())
        log.warning(
            "batch lane: records of a provider batch did not come again; read back",
            job=job.job_id,
            batch=batch.batch_id,
            missing=len(missing),
            read_back=len(found),
        )

    async def _apply(self, job: _Job, waiting: _Waiting, step: Produce | TryAgain) -> None:
        if isinstance(step, Produce):
            await self._produce(job, [waiting], step.result, ack=False)
        else:
            await self._again(job, waiting, step.lane, step.reason, step.item)

    async def _again(
        self,
        job: _Job,
        waiting: _Waiting,
        lane: str,
        reason: str,
        item: LaneItem | None = None,
    ) -> None:
        item = item or waiting.item
        record = item.record
        self._rules.release(record, batch_lane=True)
        log.info("batch lane: record goes again", job=job.job_id, index=record.index, lane=lane)
        if lane == "batch":
            # A try of its own (told apart from this one when it comes back), awaited.
            item = item.model_copy(update={"tries": waiting.item.tries + 1})
            job.expected.add((record.index, item.tries))
            # Not the job's last record any more: the items sent again are gathered into
            # one batch when all are back, not cut one by one as each returns.
            job.fired = job.last_arrived = False
            await self._send_item(item)
        else:
            live = record.model_copy(update={"lane": "live"})
            await self._records_topic.send(
                key=result_key(record.job_id, record.index).encode(), value=dump(live)
            )

    async def _close(self, job: _Job, batch: _Batch) -> None:
        """Every outcome and next try of the batch is produced: flush them, mark the batch
        done in the table, and only then acknowledge its records' deliveries."""
        await self._flush_producer()
        batch.closing = True
        self._mark_done(job, batch)
        await self._durable()
        await self._ack([e for w in batch.members.values() for e in w.events])
        del job.batches[batch.key]

    async def _all_again(self, job: _Job, batch: _Batch, reason: str) -> None:
        await self._rejoin(job, batch)
        job.resending += 1
        try:
            for waiting in batch.members.values():
                await self._again(job, waiting, "batch", reason)
        finally:
            job.resending -= 1
            self._check_complete(job)
        await self._close(job, batch)

    async def _produce(
        self, job: _Job, waiting: list[_Waiting], result: ResultEvent, *, ack: bool = True
    ) -> None:
        if len(waiting) == 1:
            # The retry round it answers, and where the record sits, as the live lane says.
            item = waiting[0].item
            result = result.model_copy(
                update={
                    "retry": item.record.retry,
                    "record_partition": item.record_partition,
                    "record_offset": item.record_offset,
                    # The record's own metadata, kept with its outcome as on the live lane.
                    "input_metadata": item.record.record.metadata or None,
                }
            )
        outcome = result.model_dump(mode="json", exclude_none=True)
        await self._results_topic.send(key=result.job_id.encode(), value=orjson.dumps(outcome))
        self._rules.settle(result, batch_lane=True)
        self._metrics.outcome(result, self._rules.cost_of(result))
        self.outcomes_sent += 1
        if ack:
            await self._flush_producer()
            await self._ack([e for w in waiting for e in w.events])

    async def _send_item(self, item: LaneItem) -> None:
        sent = await self._lane_topic.send(
            key=item.record.job_id.encode(), value=item.model_dump_json(exclude_none=True).encode()
        )
        await sent

    async def _ack(self, events: list[EventT]) -> None:
        if self._stream is None:
            return
        for event in events:
            await self._stream.ack(event)

    async def _durable(self) -> None:
        await self._flush_producer()

    def _write(
        self,
        job: _Job,
        key: str,
        entry: dict[str, Any],
        *,
        seq: int | None = None,
        merge: bool = False,
    ) -> None:
        """One batch's entry in the job's table value (written to the job's partition)."""
        _current_event.set(weakref.ref(job.anchor))
        stored = dict(self._table.get(job.job_id) or {})
        batches = dict(stored.get("batches") or {})
        batches[key] = {**batches.get(key, {}), **entry} if merge else entry
        stored["batches"] = batches
        if seq is not None:
            stored["seq"] = seq
        self._table[job.job_id] = stored

    def _update(self, job: _Job, key: str, status: str, counts: dict[str, int]) -> None:
        self._write(job, key, {"processing_status": status, "request_counts": counts}, merge=True)


# The provider's request counts of a batch that answered nothing.
_NO_COUNTS = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}


def _cid(job: _Job, index: int) -> str:
    return custom_id(job.job_id, index)


def _order(item: LaneItem) -> tuple[int, int]:
    """Which delivery of a record is later: a later retry round (POST .../retry), then a
    later try within the round (sent again to a later batch)."""
    return (item.record.retry or 0, item.tries)


def _note_done(job: _Job, entry: dict[str, Any]) -> None:
    """Note the (retry round, try) of each index of a done batch's table entry."""
    rounds = entry.get("rounds") or {}
    for index, tries in (entry.get("tries") or {}).items():
        order = (int(rounds.get(index, 0)), int(tries))
        job.done_tries[int(index)] = max(job.done_tries.get(int(index), (0, 0)), order)


def _maybe_created(exc: Exception) -> bool:
    """Whether a failed create may have been accepted all the same (its answer was lost)."""
    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return True  # a timeout or a lost connection


def _failed(item: LaneItem, error: str) -> ResultEvent:
    record = item.record
    return ResultEvent(
        job_id=record.job_id,
        index=record.index,
        success=False,
        error=error,
        record_id=record.record.id,
        finished_at=time.time(),
    )


def _capped(item: LaneItem, task: PreparedTask) -> ResultEvent:
    record = item.record
    return ResultEvent(
        job_id=record.job_id,
        index=record.index,
        success=False,
        error=BUDGET_SKIPPED_ERROR,
        skipped=True,
        skip_reason="budget_exhausted",
        record_id=record.record.id,
        finished_at=time.time(),
        model=task.model,
        lane="batch",
        **item.billed.fields(),
    )


def install_batch_lane(
    pipeline: Any,
    client: BatchClient,
    *,
    rules: JobRules,
    records: Any,
    dead_letters: DeadLetters,
    partitions: int,
    live_ahead: Callable[[str], LiveQueue] | None = None,
) -> BatchLane:
    """The lane's topic, table and agent on the pipeline's app; the process agent hands
    batch-lane records to it (`records.lane`)."""
    s: Settings = pipeline.settings
    app: faust.App = pipeline.app
    lane_topic = raw_topic(app, lane_topic_name(s), partitions=partitions)
    table = make_table(app, s, LANE_TABLE)
    pipeline.tables.append(table)
    lane = BatchLane(
        s,
        client=client,
        rules=rules,
        cancelled=pipeline.cancelled,
        table=table,
        lane_topic=lane_topic,
        records_topic=pipeline.records_topic,
        results_topic=pipeline.results_topic,
        ledger=pipeline.ledger,
        metrics=pipeline.metrics,
        dead_letters=dead_letters,
        flush=lambda: app.producer.flush(),
        live_ahead=live_ahead,
        read_back=pipeline.read_job_records,
    )
    pipeline.lane = records.lane = lane

    @app.agent(lane_topic, name="batch-lane")
    async def batch_lane(stream: faust.StreamT[bytes]) -> None:
        await lane.serve(stream)

    del batch_lane
    return lane
