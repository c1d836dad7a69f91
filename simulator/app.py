"""The Starlette app: Anthropic-compatible endpoints plus /_sim/ control endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simulator.batches import Batch, BatchNotFound, BatchStore, ItemOutcome
from simulator.config import SimulatorConfig
from simulator.faults import Fault, MarkerMemory, Markers, parse_markers, pick_fault
from simulator.protocol import (
    CacheUsage,
    InvalidRequest,
    MessagesRequest,
    Reply,
    build_reply,
    error_body,
    message_body,
    parse_messages_request,
)
from simulator.ratelimit import RateLimiter
from simulator.stats import TEXT_PREVIEW_CHARS, RequestRecord, Stats

# Error answers of the markers: (HTTP status, message), messages as the real API words them.
_FAULT_ANSWERS: dict[Fault, tuple[int, str]] = {
    Fault.BAD_REQUEST: (
        400,
        "Simulated invalid request: the user text carries [[sim:fail-400]].",
    ),
    Fault.REQUEST_TIMEOUT: (408, "Request timeout (simulated)."),
    Fault.CONFLICT: (409, "Conflict (simulated)."),
    Fault.API_ERROR: (500, "Internal server error (simulated)."),
    Fault.OVERLOADED: (529, "Overloaded (simulated)."),
    Fault.PROMPT_TOO_LONG: (400, "prompt is too long: 210345 tokens > 200000 maximum"),
    Fault.TOO_LARGE: (413, "Request exceeds the maximum allowed number of bytes."),
}
# Messages of a forced status (config force_status without force_message).
_FORCED_MESSAGES: dict[int, str] = {
    400: "output_config.format.schema: the schema is not supported (simulated).",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API (simulated).",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found (simulated).",
    500: "Internal server error (simulated).",
    503: "Service unavailable (simulated).",
    529: "Overloaded (simulated).",
}
_UNREADABLE_BODY = b"<html><body>502 upstream proxy: no message (simulated)</body></html>"


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    simulator = Simulator(config or SimulatorConfig())
    app = Starlette(
        routes=[
            Route("/v1/messages", simulator.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", simulator.count_tokens, methods=["POST"]),
            Route("/v1/messages/batches", simulator.create_batch, methods=["POST"]),
            Route("/v1/messages/batches", simulator.list_batches, methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}", simulator.retrieve_batch, methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}", simulator.delete_batch, methods=["DELETE"]),
            Route(
                "/v1/messages/batches/{batch_id}/cancel", simulator.cancel_batch, methods=["POST"]
            ),
            Route(
                "/v1/messages/batches/{batch_id}/results",
                simulator.batch_results,
                methods=["GET"],
            ),
            Route("/_sim/stats", simulator.get_stats, methods=["GET"]),
            Route("/_sim/config", simulator.get_config, methods=["GET"]),
            Route("/_sim/config", simulator.update_config, methods=["POST"]),
            Route("/_sim/reset", simulator.reset, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.simulator = simulator
    return app


@dataclass
class _Billing:
    """Filled in while a request is served, so the stats record is written even on failure.

    Tokens are only set once a reply is delivered: failed requests bill nothing.
    """

    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache: CacheUsage | None = None
    max_tokens: int | None = None
    stop_reason: str | None = None


class PromptCache:
    """Prefixes written to the prompt cache, by content, with when each expires.

    As with the API, an entry is usable only once the call that wrote it has answered: calls
    that arrive while the first one is still running write the prefix too."""

    def __init__(self) -> None:
        # key -> (when the entry became usable, when it expires)
        self._entries: dict[str, tuple[float, float]] = {}

    def usage(
        self, key: str, tokens: int, arrived: float, done: float, ttl: float, one_hour: bool = False
    ) -> CacheUsage:
        """A read when the prefix was cached and fresh when the call arrived, else a write;
        either keeps it for `ttl` seconds from `done`."""
        since, until = self._entries.get(key, (math.inf, 0.0))
        hit = since <= arrived < until
        if hit:
            self._entries[key] = (since, max(until, done + ttl))
        elif arrived >= until:  # missing or expired: this call's write makes the entry
            self._entries[key] = (done, done + ttl)
        else:  # written meanwhile by an overlapping call: keep the earliest entry
            self._entries[key] = (min(since, done), max(until, done + ttl))
        if hit:
            return CacheUsage(read=tokens)
        return CacheUsage(write_1h=tokens) if one_hour else CacheUsage(write_5m=tokens)


class Simulator:
    """Mutable simulator state and the handlers that use it.

    All state lives on one event loop and is only touched between awaits, so no locks.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._limiter = RateLimiter()
        self._memory = MarkerMemory()
        self._prompt_cache = PromptCache()
        self._rng = random.Random(config.seed)
        self.batches = BatchStore()

    async def messages(self, request: Request) -> Response:
        arrived = time.time()
        billing = _Billing()
        status = 500  # kept if serving raises, so the crash still shows up in stats
        self.stats.enter()
        try:
            response = await self._serve_messages(request, billing)
            status = response.status_code
            return response
        finally:
            self.stats.leave(
                RequestRecord(
                    t=arrived,
                    t_done=time.time(),
                    status=status,
                    input_tokens=billing.input_tokens,
                    output_tokens=billing.output_tokens,
                    text=billing.text[:TEXT_PREVIEW_CHARS],
                    api_key_hint=bool(
                        request.headers.get("x-api-key") or request.headers.get("authorization")
                    ),
                    cache_creation_input_tokens=billing.cache.creation if billing.cache else 0,
                    cache_read_input_tokens=billing.cache.read if billing.cache else 0,
                    cache_creation_1h_input_tokens=billing.cache.write_1h if billing.cache else 0,
                    max_tokens=billing.max_tokens,
                    stop_reason=billing.stop_reason,
                )
            )

    async def _serve_messages(self, request: Request, billing: _Billing) -> Response:
        request_id: str = request.state.request_id
        request.state.arrived = time.time()
        config = self.config
        if config.api_keys is not None and _credential(request) not in config.api_keys:
            return _error(401, _FORCED_MESSAGES[401], request_id)
        try:
            parsed = parse_messages_request(await _json_body(request), require_max_tokens=True)
            billing.text, billing.max_tokens = parsed.user_text, parsed.max_tokens
            markers = parse_markers(parsed.user_text)
        except InvalidRequest as exc:
            return _error(400, str(exc), request_id)
        if config.models is not None and parsed.model not in config.models:
            return _error(404, f"model: {parsed.model}", request_id)
        now = time.time()
        if self._memory.rate_limit_now(parsed.user_text, markers):
            headers = _throttle_headers(markers.throttle, now)
            headers.update(
                {k: v for k, v in self._limiter.headers(now, config).items() if k not in headers}
            )
            return _error(
                429, "Simulated rate limit ([[sim:429-...]] marker).", request_id, headers
            )
        retry_after = self._limiter.retry_after(now, parsed.input_tokens, config)
        if retry_after is not None:
            headers = {"retry-after": str(retry_after), **self._limiter.headers(now, config)}
            message = "This request would exceed the configured rate limit. Please retry later."
            return _error(429, message, request_id, headers)
        self._limiter.admit(now, parsed.input_tokens)
        attempt = self._memory.attempt(parsed.user_text, markers)

        await asyncio.sleep(self._delay_seconds(markers))
        # Read after the latency: a call in flight when an outage begins fails too.
        if self.config.force_status is not None:
            status = self.config.force_status
            message = self.config.force_message or _FORCED_MESSAGES.get(status, "Simulated error.")
            return _error(status, message, request_id)
        fault = pick_fault(markers, attempt) or self._random_fault()
        if fault is Fault.UNREADABLE:
            return Response(_UNREADABLE_BODY, status_code=200, media_type="text/plain")
        if fault is not None and fault is not Fault.BAD_JSON:
            status, message = _FAULT_ANSWERS[fault]
            headers = self._limiter.headers(time.time(), config)
            return _error(status, message, request_id, headers)

        done = time.time()
        parsed, reply, cache = self._reply(parsed, markers, fault, request.state.arrived, done)
        self._limiter.charge_output(done, reply.output_tokens)
        billing.input_tokens, billing.output_tokens = parsed.input_tokens, reply.output_tokens
        billing.cache, billing.stop_reason = cache, reply.stop_reason
        return _json(200, message_body(parsed, reply, cache), self._limiter.headers(done, config))

    def _reply(
        self,
        parsed: MessagesRequest,
        markers: Markers,
        fault: Fault | None,
        arrived: float,
        done: float,
    ) -> tuple[MessagesRequest, Reply, CacheUsage]:
        """The answer to an admitted call (live or a batch's request) that is not an error:
        the content, and the prompt cache's part of its usage (input tokens then exclude
        the cached prefix)."""
        reply = build_reply(
            parsed,
            corrupt=fault is Fault.BAD_JSON,
            stop=markers.stop,
            needs_tokens=markers.needs_tokens,
        )
        cache = CacheUsage(
            markers.cache_write, markers.cache_write_1h, markers.cache_read, markers.usage_nulls
        )
        config = self.config
        if cache == CacheUsage() and parsed.cache_key is not None:
            # Markers win; otherwise a long enough prefix marked cache_control is cached.
            if parsed.cache_prefix_tokens >= config.cache_min_tokens:
                one_hour = parsed.cache_ttl_1h
                cache = self._prompt_cache.usage(
                    parsed.cache_key,
                    parsed.cache_prefix_tokens,
                    arrived,
                    done,
                    3600.0 if one_hour else config.cache_ttl_seconds,
                    one_hour=one_hour,
                )
                parsed = dataclasses.replace(
                    parsed, input_tokens=max(0, parsed.input_tokens - parsed.cache_prefix_tokens)
                )
        return parsed, reply, cache

    def answer_batch_item(self, params: dict[str, Any], at: float) -> ItemOutcome:
        """One request of a message batch, answered as the live call would be at time `at`
        (no rate limit or latency: a batch has its own pool). Errors become ``errored``
        results with the live call's error type and message."""
        request_id = f"req_sim_{uuid.uuid4().hex[:24]}"
        try:
            parsed = parse_messages_request(params, require_max_tokens=True)
            markers = parse_markers(parsed.user_text)
        except InvalidRequest as exc:
            return _errored(400, str(exc), request_id)
        if self.config.models is not None and parsed.model not in self.config.models:
            return _errored(404, f"model: {parsed.model}", request_id)
        if markers.batch_expired:
            return ItemOutcome({"type": "expired"})
        if self._memory.rate_limit_now(parsed.user_text, markers):
            return _errored(429, "Simulated rate limit ([[sim:429-...]] marker).", request_id)
        attempt = self._memory.attempt(parsed.user_text, markers)
        if self.config.force_status is not None:
            status = self.config.force_status
            message = self.config.force_message or _FORCED_MESSAGES.get(status, "Simulated error.")
            return _errored(status, message, request_id)
        fault = pick_fault(markers, attempt) or self._random_fault()
        if fault is Fault.UNREADABLE:
            return _errored(500, "Internal server error (simulated).", request_id)
        if fault is not None and fault is not Fault.BAD_JSON:
            return _errored(*_FAULT_ANSWERS[fault], request_id)
        parsed, reply, cache = self._reply(parsed, markers, fault, at, at)
        return ItemOutcome(
            {"type": "succeeded", "message": message_body(parsed, reply, cache)},
            input_tokens=parsed.input_tokens,
            output_tokens=reply.output_tokens,
            cache_creation_input_tokens=cache.creation,
            cache_read_input_tokens=cache.read,
        )

    async def create_batch(self, request: Request) -> Response:
        request_id: str = request.state.request_id
        if self.config.api_keys is not None and _credential(request) not in self.config.api_keys:
            return _error(401, _FORCED_MESSAGES[401], request_id)
        try:
            batch = self.batches.create(
                await _json_body(request),
                now=time.time(),
                processing_seconds=self.config.batch_processing_seconds,
                expiry_seconds=self.config.batch_expiry_seconds,
                stall=self.config.batch_stall,
                stuck=self.config.batch_stall and self.config.batch_stall_past_expiry,
                results_base=str(request.base_url).rstrip("/"),
                concurrency=self.config.batch_concurrency,
            )
        except InvalidRequest as exc:
            return _error(400, str(exc), request_id)
        body = batch.body()
        # Accepted (and counted) now; the answer may be held back to open a crash window.
        await asyncio.sleep(self.config.batch_create_delay_ms / 1000)
        return _json(200, body)

    async def retrieve_batch(self, request: Request) -> Response:
        batch = self._visible_batch(request)
        if isinstance(batch, Response):
            return batch
        return _json(200, batch.body())

    async def list_batches(self, request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(400, "limit: between 1 and 1000", request.state.request_id)
        page = self.batches.listing(
            time.time(),
            self.answer_batch_item,
            limit=limit,
            after_id=query.get("after_id"),
            before_id=query.get("before_id"),
        )
        return _json(200, page)

    async def cancel_batch(self, request: Request) -> Response:
        try:
            batch = self.batches.cancel(
                request.path_params["batch_id"], time.time(), self.answer_batch_item
            )
        except BatchNotFound as exc:
            return _error(404, f"message batch {exc} not found", request.state.request_id)
        return _json(200, batch.body())

    async def delete_batch(self, request: Request) -> Response:
        try:
            body = self.batches.delete(
                request.path_params["batch_id"], time.time(), self.answer_batch_item
            )
        except BatchNotFound as exc:
            return _error(404, f"message batch {exc} not found", request.state.request_id)
        except InvalidRequest as exc:
            return _error(400, str(exc), request.state.request_id)
        return _json(200, body)

    async def batch_results(self, request: Request) -> Response:
        batch = self._visible_batch(request)
        if isinstance(batch, Response):
            return batch
        if batch.ended is None:
            message = f"message batch {batch.id} has not ended yet"
            return _error(404, message, request.state.request_id)
        return Response(
            self.batches.results_jsonl(batch), status_code=200, media_type="application/binary"
        )

    def _visible_batch(self, request: Request) -> Batch | Response:
        """The batch, or the 404 the provider gives for an unknown one and, within
        `batch_not_found_seconds` after its create, for a known one."""
        batch_id = request.path_params["batch_id"]
        now = time.time()
        try:
            batch = self.batches.get(batch_id, now, self.answer_batch_item)
        except BatchNotFound:
            return _error(404, f"message batch {batch_id} not found", request.state.request_id)
        if now - batch.created < self.config.batch_not_found_seconds:
            self.batches.not_found_answers += 1
            return _error(404, f"message batch {batch_id} not found", request.state.request_id)
        return batch

    async def count_tokens(self, request: Request) -> Response:
        """Same estimate as /v1/messages usage; consumes no rate limit and is not recorded."""
        try:
            parsed = parse_messages_request(await _json_body(request), require_max_tokens=False)
        except InvalidRequest as exc:
            return _error(400, str(exc), request.state.request_id)
        return _json(200, {"input_tokens": parsed.input_tokens})

    async def get_stats(self, request: Request) -> Response:
        return _json(200, {**self.stats.snapshot(), **self.batches.counters()})

    async def get_config(self, request: Request) -> Response:
        return _json(200, self.config.model_dump())

    async def update_config(self, request: Request) -> Response:
        try:
            patch = await _json_body(request)
            if not isinstance(patch, dict):
                raise InvalidRequest("config update must be a JSON object")
            self.config = self.config.updated(patch)
        except (InvalidRequest, ValidationError) as exc:
            return _error(400, str(exc), request.state.request_id)
        if "seed" in patch:
            self._rng = random.Random(self.config.seed)
        return _json(200, self.config.model_dump())

    async def reset(self, request: Request) -> Response:
        """Back to a fresh start (history, windows, marker memory, RNG); config is kept."""
        self.stats.reset()
        self._limiter = RateLimiter()
        self._memory = MarkerMemory()
        self._prompt_cache = PromptCache()
        self._rng = random.Random(self.config.seed)
        self.batches = BatchStore()
        return _json(200, {"status": "reset"})

    def _delay_seconds(self, markers: Markers) -> float:
        latency = self.config.latency_ms
        if self.config.latency_jitter_ms:
            latency += self._rng.uniform(
                -self.config.latency_jitter_ms, self.config.latency_jitter_ms
            )
        return (max(0.0, latency) + markers.slow_ms) / 1000

    def _random_fault(self) -> Fault | None:
        if self.config.failure_rate and self._rng.random() < self.config.failure_rate:
            return self._rng.choice((Fault.API_ERROR, Fault.OVERLOADED))
        return None


def _credential(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def _throttle_headers(throttle: tuple[str, str] | None, now: float) -> dict[str, str]:
    """Headers of a marker's 429: ``retry-after: 1``, or the form the marker names."""
    if throttle is None:
        return {"retry-after": "1"}
    name, value = throttle
    if name == "retry-after":
        if value.startswith(("date+", "date-")):
            ahead = float(value[4:])
            # HTTP-dates have whole seconds: round up, never promise the slot too early.
            return {"retry-after": email.utils.formatdate(math.ceil(now + ahead), usegmt=True)}
        return {"retry-after": value}
    if name == "retry-after-ms":
        return {"retry-after-ms": value}
    seconds = float(value)
    limit = {"reset-after": "requests"}.get(name, name.removeprefix("429-"))
    headers = {
        f"anthropic-ratelimit-{limit}-limit": "1000",
        f"anthropic-ratelimit-{limit}-remaining": "0",
        f"anthropic-ratelimit-{limit}-reset": _rfc3339(now + seconds),
    }
    if name != "reset-after":
        headers["retry-after"] = "1"
    return headers


def _rfc3339(timestamp: float) -> str:
    when = datetime.fromtimestamp(timestamp, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


async def health(request: Request) -> Response:
    return _json(200, {"status": "ok"})


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404/405) in Anthropic's error shape instead of Starlette's plain text."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return _error(status, str(getattr(exc, "detail", exc)), request.state.request_id)


class RequestIdMiddleware:
    """Gives every response a ``request-id`` header, as the real API does."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = f"req_sim_{uuid.uuid4().hex[:24]}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("request-id", request_id)
            await send(message)

        await self._app(scope, receive, send_with_id)


async def _json_body(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from exc


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def _errored(status: int, message: str, request_id: str) -> ItemOutcome:
    """A batch request's ``errored`` result: the error body a live call would have had."""
    return ItemOutcome({"type": "errored", "error": error_body(status, message, request_id)})


def _error(
    status: int, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    return _json(status, error_body(status, message, request_id), headers)
