"""The Starlette app: Anthropic-compatible endpoints plus /_sim/ control endpoints."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
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

from simulator.config import SimulatorConfig
from simulator.faults import Fault, MarkerMemory, Markers, parse_markers, pick_fault
from simulator.protocol import (
    InvalidRequest,
    build_reply,
    error_body,
    message_body,
    parse_messages_request,
)
from simulator.ratelimit import RateLimiter
from simulator.stats import TEXT_PREVIEW_CHARS, RequestRecord, Stats

_FAULT_MESSAGES: dict[Fault, str] = {
    Fault.BAD_REQUEST: "Simulated invalid request: the user text carries [[sim:fail-400]].",
    Fault.REQUEST_TIMEOUT: "Request timeout (simulated).",
    Fault.CONFLICT: "Conflict (simulated).",
    Fault.API_ERROR: "Internal server error (simulated).",
    Fault.OVERLOADED: "Overloaded (simulated).",
}


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    simulator = Simulator(config or SimulatorConfig())
    app = Starlette(
        routes=[
            Route("/v1/messages", simulator.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", simulator.count_tokens, methods=["POST"]),
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


class Simulator:
    """Mutable simulator state and the handlers that use it.

    All state lives on one event loop and is only touched between awaits, so no locks.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._limiter = RateLimiter()
        self._memory = MarkerMemory()
        self._rng = random.Random(config.seed)

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
                )
            )

    async def _serve_messages(self, request: Request, billing: _Billing) -> Response:
        request_id: str = request.state.request_id
        try:
            parsed = parse_messages_request(await _json_body(request), require_max_tokens=True)
            billing.text = parsed.user_text
            markers = parse_markers(parsed.user_text)
        except InvalidRequest as exc:
            return _error(400, str(exc), request_id)

        now = time.time()
        if self._memory.rate_limit_now(parsed.user_text, markers):
            headers = {"retry-after": "1", **self._limiter.headers(now, self.config)}
            return _error(
                429, "Simulated rate limit ([[sim:429-...]] marker).", request_id, headers
            )
        retry_after = self._limiter.retry_after(now, parsed.input_tokens, self.config)
        if retry_after is not None:
            headers = {"retry-after": str(retry_after), **self._limiter.headers(now, self.config)}
            message = "This request would exceed the configured rate limit. Please retry later."
            return _error(429, message, request_id, headers)
        self._limiter.admit(now, parsed.input_tokens)
        attempt = self._memory.attempt(parsed.user_text, markers)

        await asyncio.sleep(self._delay_seconds(markers))
        fault = pick_fault(markers, attempt) or self._random_fault()
        if fault is not None and fault is not Fault.BAD_JSON:
            headers = self._limiter.headers(time.time(), self.config)
            return _error(fault.value, _FAULT_MESSAGES[fault], request_id, headers)

        reply = build_reply(parsed, corrupt=fault is Fault.BAD_JSON)
        done = time.time()
        self._limiter.charge_output(done, reply.output_tokens)
        billing.input_tokens, billing.output_tokens = parsed.input_tokens, reply.output_tokens
        return _json(200, message_body(parsed, reply), self._limiter.headers(done, self.config))

    async def count_tokens(self, request: Request) -> Response:
        """Same estimate as /v1/messages usage; consumes no rate limit and is not recorded."""
        try:
            parsed = parse_messages_request(await _json_body(request), require_max_tokens=False)
        except InvalidRequest as exc:
            return _error(400, str(exc), request.state.request_id)
        return _json(200, {"input_tokens": parsed.input_tokens})

    async def get_stats(self, request: Request) -> Response:
        return _json(200, self.stats.snapshot())

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
        self._rng = random.Random(self.config.seed)
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


def _error(
    status: int, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    return _json(status, error_body(status, message, request_id), headers)
