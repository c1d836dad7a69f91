"""Processing one record: budget, attempts, retries, and the one outcome it produces.

What each provider answer means is decided in `stream_app.provider.answers`; when the
provider is down or refuses the configuration, `stream_app.provider.breaker` holds every call.
Whatever happens (an exception of ours included), `RecordProcessor.process` returns an
outcome for the record; only cancellation (the worker stopping) leaves it without one.
A record whose job is cancelled (or deleted) makes no call after that: waiting for its retry
or for the breaker, it ends at once (skipped, with what its earlier attempts were billed).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

import anthropic

from schemas import InsightResponse, RecordEvent, ResultEvent, TaskResponse
from stream_app.core.exceptions import UnreadableAnswer, first_line
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import result_key
from stream_app.jobs.cancellation import CancelledBeforeCall, CancelledJobs
from stream_app.provider.answers import (
    Answer,
    ConfigurationFault,
    ContentFault,
    ProviderFault,
    RateLimited,
    Succeeded,
    Truncated,
    classify_error,
    read_reply,
    redact,
)
from stream_app.provider.breaker import Admission, ProviderBreaker
from stream_app.provider.budget import RateBudget
from stream_app.provider.call_slots import CallSlots
from stream_app.provider.client import CANARY_MAX_TOKENS, CANARY_TEXT, InsightClient, Reply
from stream_app.provider.request import PreparedTask
from stream_app.provider.retry_timing import WaitReading
from stream_app.provider.usage import Usage

log = get_logger(__name__)

STOPPED_ERROR = (
    "skipped: the job was cancelled while this record waited to be tried again "
    "(what its earlier attempts were billed is counted)"
)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 1
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    # The longest wait a provider header may impose (BATCH_RETRY_AFTER_CAP_SECONDS).
    retry_after_cap_seconds: float = 300.0

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Jittered exponential backoff; the provider's `retry-after` wins when longer."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        delay = base * (0.5 + rng.random() / 2)
        return max(delay, retry_after or 0.0)


class IntakeGate:
    """Admits records to the LLM until the worker drains, and counts calls in flight.

    On shutdown the gate closes: calls in flight finish and their results are sent, while
    records not yet started wait at `admit()` until Faust cancels them. Those are never
    acknowledged, so their offsets are not committed and they are processed after restart.
    """

    def __init__(self) -> None:
        self._closed = False
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Records admitted and without an outcome yet (waiting for the budget or in a call)."""
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    async def admit(self) -> None:
        if self._closed:
            await asyncio.Event().wait()  # until cancelled by the stopping worker

    @asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    @asynccontextmanager
    async def parked(self) -> AsyncIterator[None]:
        """A record waiting for the provider (breaker open, line stopped) is not a call in
        flight: it does not hold up a drain, and once the gate closes it makes no new call
        (it stays unacknowledged and runs after the restart)."""
        self._count -= 1
        if self._count == 0:
            self._idle.set()
        try:
            yield
            if self._closed:
                await asyncio.Event().wait()  # until cancelled by the stopping worker
        finally:
            self._count += 1
            self._idle.clear()

    def close(self) -> None:
        """No record starts from now on (calls in flight go on)."""
        self._closed = True

    async def drain(self, timeout: float) -> int:
        """Close the gate and wait for calls in flight; returns how many were left."""
        self.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        return self._count


@dataclass
class _Run:
    """One record's way through its attempts: what was billed, how many calls."""

    event: RecordEvent
    started: float
    task: PreparedTask
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    # Probes (calls while the breaker was open) of this record that the provider refused,
    # since the last refused canary (which explains the ones before: an outage).
    failed_probes: int = 0
    canaries_refused: int = 0

    @property
    def key(self) -> str:
        return result_key(self.event.job_id, self.event.index)


@dataclass
class RecordProcessor:
    """Turns a record event into exactly one result event; never raises (but on cancel)."""

    client: InsightClient
    budget: RateBudget
    policy: RetryPolicy
    breaker: ProviderBreaker = field(default_factory=ProviderBreaker)
    gate: IntakeGate = field(default_factory=IntakeGate)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    # Calls in flight follow the budget and the measured latency (None: no limit here).
    slots: CallSlots | None = None
    # The worker's cancelled (and deleted) jobs: a record of one makes no further call,
    # whether it waits for a retry or for the breaker (None: nothing is cancelled).
    cancelled: CancelledJobs | None = None

    async def process(self, event: RecordEvent, task: PreparedTask | None = None) -> ResultEvent:
        """`task`: the record's job's task (None: the default task)."""
        run = _Run(event, time.monotonic(), task or self.client.default_task)
        try:
            return await self._attempts(run)
        except Exception as exc:  # the record's boundary: it gets an outcome whatever happens
            error = self._internal_error(run, exc, "")
            if run.usage.total > 0:
                # Retrying would pay again for what was already billed.
                return self._failed(run, error)
        try:
            return await self._attempts(run)
        except Exception as exc:
            return self._failed(run, self._internal_error(run, exc, " again"))

    def _internal_error(self, run: _Run, exc: Exception, again: str) -> str:
        log.exception(
            f"internal error while processing a record{again}",
            job=run.event.job_id,
            index=run.event.index,
            billed_tokens=run.usage.total,
        )
        if isinstance(exc, UnreadableAnswer):
            return f"unreadable answer{again}: {redact(first_line(exc))}"
        return f"internal error: {type(exc).__name__}: {redact(first_line(exc))}"

    async def _attempts(self, run: _Run) -> ResultEvent:
        event, key = run.event, run.key
        max_tokens = run.task.max_tokens
        ceiling = self.client.ceiling_for(run.task)
        widened = False
        failures = 0  # attempts that used up one of the record's retries
        # True for the call right after a canary was answered in this record's probe turn.
        vouched = False
        while True:
            admission = await self._admit(run)
            if isinstance(admission, ResultEvent):  # its job was cancelled meanwhile
                return admission
            try:
                answer = await self._call(run, max_tokens, admission)
            except BaseException:
                self.breaker.release(admission)
                raise
            if answer is None:  # the breaker opened while it waited for its slot
                self.breaker.release(admission)
                continue
            # A failure now, with the breaker closed, right after a canary was answered.
            own, vouched = vouched and not admission.probe, False
            if isinstance(answer, Succeeded):
                self.breaker.answered(admission)
                return self._succeeded(run, answer.fields)
            if isinstance(answer, RateLimited):
                self._throttled(run, admission, answer)
                continue
            if isinstance(answer, ProviderFault):
                wait = answer.wait.seconds if answer.wait else None
                self._log_wait(run, answer.reading)
                if own:
                    # The provider answered a canary just before this call: its own fault.
                    self.breaker.own_failure(admission)
                    return self._failed(run, answer.message)
                if admission.probe:
                    if run.canaries_refused != self.breaker.canaries_refused:
                        run.failed_probes, run.canaries_refused = 0, self.breaker.canaries_refused
                    run.failed_probes += 1
                    retries = self.policy.retries
                    if self.breaker.canary_wanted(admission, run.failed_probes, retries):
                        vouched = await self._canary(run, admission, answer.message, wait)
                        continue
                if self.breaker.provider_failed(admission, answer.message, wait):
                    failures += 1
                if failures > self.policy.retries:
                    if await self._trouble_is_its_own(key):
                        return self._failed(run, answer.message)
                    failures = self.policy.retries  # others fail alike: not this record's doing
                if not self.breaker.is_open:  # when open, admit() does the waiting
                    await self._back_off(run, max(failures, 1), wait, answer.message)
                continue
            if isinstance(answer, ConfigurationFault):
                if widened and answer.parameter == "max_tokens":
                    self.breaker.answered(admission)
                    return self._failed(
                        run,
                        f"output truncated at {run.task.max_tokens} tokens, and the larger "
                        f"max_tokens was refused: {answer.message}",
                    )
                if self.breaker.configuration_fault(
                    admission, answer.message, answer.could_be_the_records
                ):
                    return self._failed(run, answer.message)
                continue
            # Every other answer is the provider working: the trouble, if any, is the record's.
            self.breaker.answered(admission)
            if isinstance(answer, ContentFault):
                return self._failed(run, answer.message)
            if isinstance(answer, Truncated):
                if not widened and ceiling > max_tokens:
                    widened, max_tokens = True, ceiling
                    log.info(
                        "output truncated: retrying once with more room",
                        job=event.job_id,
                        index=event.index,
                        output_tokens=answer.output_tokens,
                        max_tokens=max_tokens,
                    )
                    continue
                return self._failed(run, answer.message)
            failures += 1
            if failures > self.policy.retries:
                return self._failed(run, answer.message)
            await self._back_off(run, failures, None, answer.message)

    async def _admit(self, run: _Run) -> Admission | ResultEvent:
        """The breaker's admission for the record's next call; or, when its job was
        cancelled (or deleted) before or while it waited, no call: CancelledBeforeCall when
        it has made none yet, else its outcome (skipped, with what it was billed)."""
        if self._job_cancelled(run):
            return self._stopped(run)
        if not self.breaker.is_open:
            admitted: Admission | None = await self.breaker.admit(run.key)  # no wait
        else:
            async with self.gate.parked():
                admitted = await self._unless_cancelled(run, self.breaker.admit(run.key))
        return admitted if admitted is not None else self._stopped(run)

    def _job_cancelled(self, run: _Run) -> bool:
        return self.cancelled is not None and run.event.job_id in self.cancelled

    async def _unless_cancelled(
        self, run: _Run, admitting: Coroutine[Any, Any, Admission]
    ) -> Admission | None:
        """The admission, or None when the record's job was cancelled while it waited (an
        admission given in that same instant is released unused, as it is when this wait
        itself is cancelled)."""
        if self.cancelled is None:
            return await admitting
        admit = asyncio.ensure_future(admitting)
        cancel = asyncio.ensure_future(self.cancelled.wait(run.event.job_id))
        waited = False
        try:
            await asyncio.wait({admit, cancel}, return_when=asyncio.FIRST_COMPLETED)
            waited = True
        finally:
            cancel.cancel()
            admit.cancel()  # no effect once it is done
            for task in (admit, cancel):
                with suppress(asyncio.CancelledError):
                    await asyncio.wait({task})
            admission = admit.result() if not admit.cancelled() else None
            if admission is not None and (not waited or self._job_cancelled(run)):
                self.breaker.release(admission)
                admission = None
        return admission

    def _stopped(self, run: _Run) -> ResultEvent:
        if run.attempts == 0:
            raise CancelledBeforeCall(run.event.job_id)
        log.info(
            "record of a cancelled job: not tried again",
            job=run.event.job_id,
            index=run.event.index,
            attempts=run.attempts,
        )
        return _outcome(run, error=STOPPED_ERROR).model_copy(
            update={"skipped": True, "skip_reason": "cancelled"}
        )

    async def _canary(
        self, run: _Run, admission: Admission, message: str, retry_after: float | None
    ) -> bool:
        """In the turn of a probe that failed (`message`): one canary call
        (`InsightClient.canary`, the record's model) through the rate budget. True when the
        provider answered it (the breaker closes; the record's next call decides); False
        when it was refused too (an outage: no retry used) or said nothing either way."""
        chars = len(CANARY_TEXT)
        grant = await self.budget.acquire(
            self.budget.estimate_input_tokens(chars), CANARY_MAX_TOKENS
        )
        billed = Usage()
        verdict: Answer | Exception | None = None
        try:
            billed = await self.client.canary(run.task.model)
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            verdict = classify_error(
                exc, now=self.clock(), cap_seconds=self.policy.retry_after_cap_seconds
            )
        except Exception as exc:
            log.exception("internal error while sending the canary", job=run.event.job_id)
            verdict = exc
        except BaseException:
            self.breaker.provider_failed(admission, message, retry_after)
            raise
        finally:
            self.budget.settle(
                grant,
                chars,
                billed.input_tokens + billed.cache_creation_input_tokens,
                billed.output_tokens,
            )
        if verdict is None:
            log.info(
                "canary answered",
                job=run.event.job_id,
                index=run.event.index,
                model=run.task.model,
                input_tokens=billed.input_tokens,
                output_tokens=billed.output_tokens,
            )
            self.breaker.canary_answered(admission)
            return True
        if isinstance(verdict, ProviderFault):
            self.breaker.canary_failed(admission, verdict.message, retry_after)
            return False
        if isinstance(verdict, RateLimited):
            self.budget.throttled(
                verdict.wait.seconds if verdict.wait else None, verdict.requests_limit
            )
        # A 429, a configuration fault or an internal error: no evidence either way.
        self.breaker.provider_failed(admission, message, retry_after)
        return False

    async def _call(self, run: _Run, max_tokens: int, admission: Admission) -> Answer | None:
        """One attempt: a call slot, a budget grant, the call, and what its answer means;
        None when the call did not go out after all."""
        hold: AbstractAsyncContextManager[None] = (
            self.slots.hold() if self.slots is not None else nullcontext()
        )
        async with hold:
            return await self._granted_call(run, max_tokens, admission)

    async def _granted_call(
        self, run: _Run, max_tokens: int, admission: Admission
    ) -> Answer | None:
        record = run.event.record
        chars = self.client.request_chars(record, run.task)
        grant = await self.budget.acquire(
            self.budget.estimate_input_tokens(chars),
            self.budget.estimate_output_tokens(max_tokens),
        )
        billed = Usage()
        headers: Mapping[str, str] = {}
        try:
            if not self.breaker.still_admits(admission):
                return None
            run.attempts += 1
            sent = time.monotonic()
            try:
                reply: Reply = await self.client.analyze(record, max_tokens, run.task)
            except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
                # A 429's limit header is read by `RateBudget.throttled`, which compares it
                # with the limit in force before adopting it.
                if isinstance(exc, anthropic.APIStatusError) and exc.status_code != 429:
                    headers = exc.response.headers
                return classify_error(
                    exc, now=self.clock(), cap_seconds=self.policy.retry_after_cap_seconds
                )
            if self.slots is not None:
                self.slots.observe(time.monotonic() - sent)
            billed, headers = reply.usage, reply.headers
            run.usage += billed
            return read_reply(reply, run.task.parse)
        finally:
            # Cache writes count against the provider's input-token limit; reads do not.
            billed_input = billed.input_tokens + billed.cache_creation_input_tokens
            self.budget.settle(grant, chars, billed_input, billed.output_tokens)
            self.budget.observe_headers(headers)

    async def _trouble_is_its_own(self, key: str) -> bool:
        """After its retries, a record fails for provider trouble only when the trouble is
        its alone; when other calls are in flight, their answer decides."""
        if self.breaker.others_in_flight(key):
            await self.breaker.next_answer(timeout=self.policy.max_backoff_seconds)
        return self.breaker.is_isolated(key)

    def _throttled(self, run: _Run, admission: Admission, answer: RateLimited) -> None:
        """A 429 never uses up a retry: the whole worker waits and slows down."""
        wait = answer.wait.seconds if answer.wait else None
        self.breaker.rate_limited(admission, wait)
        early = self.budget.throttled(wait, answer.requests_limit)
        if answer.token_limits and answer.tokens_reset_at is not None:
            until = min(answer.tokens_reset_at, self.clock() + self.policy.retry_after_cap_seconds)
            self.budget.hold_tokens(until)
        self._log_wait(run, answer.reading)
        log.info(
            "provider throttled",
            job=run.event.job_id,
            index=run.event.index,
            wait=round(wait, 3) if wait is not None else None,
            source=answer.wait.source if answer.wait else None,
            arrived_early=early,
            token_limits=",".join(answer.token_limits) or None,
        )

    def _log_wait(self, run: _Run, reading: WaitReading) -> None:
        for header, raw in reading.ignored:
            log.info("ignored unreadable wait header", header=header, value=raw[:80])
        wait = reading.wait
        if wait is not None and wait.capped:
            log.warning(
                "provider asked for a longer wait than BATCH_RETRY_AFTER_CAP_SECONDS: capped",
                job=run.event.job_id,
                index=run.event.index,
                header=wait.source,
                asked_seconds=wait.asked,
                capped_seconds=wait.seconds,
            )

    async def _back_off(
        self, run: _Run, failures: int, retry_after: float | None, error: str
    ) -> None:
        """Wait before the record's next attempt; cut short when its job is cancelled
        (`_admit` then ends it)."""
        delay = self.policy.backoff(failures, retry_after, self.rng)
        log.info(
            "retrying record",
            job=run.event.job_id,
            index=run.event.index,
            attempt=run.attempts,
            error=error,
            delay=round(delay, 3),
        )
        if self.cancelled is None:
            await self.sleep(delay)
            return
        sleeping = asyncio.ensure_future(self.sleep(delay))
        cancel = asyncio.ensure_future(self.cancelled.wait(run.event.job_id))
        try:
            await asyncio.wait({sleeping, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, cancel):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    def _succeeded(self, run: _Run, fields: dict[str, Any]) -> ResultEvent:
        response = run.task.response(
            fields,
            run.usage,
            attempts=run.attempts,
            latency_ms=int((time.monotonic() - run.started) * 1000),
        )
        return _outcome(run, response=response)

    @staticmethod
    def _failed(run: _Run, error: str) -> ResultEvent:
        return _outcome(run, error=error)


def _outcome(
    run: _Run,
    *,
    response: InsightResponse | TaskResponse | None = None,
    error: str | None = None,
) -> ResultEvent:
    event = run.event
    return ResultEvent(
        job_id=event.job_id,
        index=event.index,
        success=response is not None,
        response=response,
        error=error,
        record_id=event.record.id,
        input_metadata=event.record.metadata or None,
        attempts=run.attempts,
        finished_at=time.time(),
        model=run.task.model,
        **run.usage.fields(),
    )
