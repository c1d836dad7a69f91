"""The Starlette app of /api/v1: its routes and its lifespan, nothing else. The lifespan
owns the running service and the HTTP client the resources share (Starlette's lifespan
state: `request.state.service`, `.http`, `.api_keys`).

The modules below it: one per resource (intake, estimate, results, events, jobs, cancel,
health, metrics, web), then what resources share (forwarding to a job's owner; access,
bodies, streams, views, job options, records), then errors. No module imports this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from api import cancel, delete, estimate, events, health, intake, jobs, metrics, results, retry, web
from api.errors import EXCEPTION_HANDLERS
from api.keys import KeyTable
from stream_app.core.logs import get_logger
from stream_app.core.settings import Settings
from stream_app.running.service import Service, running_service

log = get_logger(__name__)


class State(TypedDict):
    service: Service
    http: httpx.AsyncClient
    api_keys: KeyTable


def create_api(settings: Settings) -> Starlette:
    api_keys = KeyTable(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        if api_keys.open:
            log.warning(
                "the API is open to anyone who reaches it: set API_KEYS or API_KEYS_FILE",
                host=settings.host,
            )
        else:
            log.info("API keys required", clients=api_keys.clients())
        if settings.api_keys_file is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                # SIGHUP reads API_KEYS_FILE again (where the platform has it).
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, api_keys.reload)
        async with running_service(settings) as service:
            # At the stop signal, before uvicorn's graceful HTTP phase: no record starts.
            app.state.on_signal.append(service.stop_intake)
            service.on_fatal = lambda reason: setattr(app.state, "fatal", reason)
            metrics.install(service)
            async with httpx.AsyncClient(timeout=10.0) as http:
                yield {"service": service, "http": http, "api_keys": api_keys}

    routes = [
        Route("/api/v1/batch", intake.submit_batch, methods=["POST"]),
        Route("/api/v1/batch/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/api/v1/batch/estimate", estimate.estimate_batch, methods=["POST"]),
        Route("/api/v1/tasks", estimate.list_tasks, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/status", results.job_status, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/cancel", cancel.cancel_job, methods=["POST"]),
        Route("/api/v1/batch/{job_id}", delete.delete_job, methods=["DELETE"]),
        Route("/api/v1/batch/{job_id}/retry", retry.retry_job, methods=["POST"]),
        Route("/api/v1/batch/{job_id}/results", results.results_page, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/results.ndjson", results.results_ndjson, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/results.csv", results.results_csv, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/events", events.job_events, methods=["GET"]),
        Route("/api/v1/health", health.health, methods=["GET"]),
        Route("/api/v1/ready", health.ready, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        *web.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    # Hooks the server calls at SIGTERM/SIGINT (stream_app.running.server), and the reason the
    # worker gave up, if it did (the process then exits non-zero).
    app.state.on_signal = []
    app.state.fatal = None
    return app
