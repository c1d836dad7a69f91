"""POST /api/v1/batch/estimate: what a batch would cost and take, without running it; and
GET /api/v1/tasks: the task presets."""

from __future__ import annotations

import tempfile
import time
from typing import IO

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access import caller_of
from api.bodies import parse_batch, read_json_body
from api.job_options import JobOptions, request_options
from api.streams import STREAMED_TYPES, spool_records
from stream_app.jobs.aggregation import JobStatus
from stream_app.jobs.estimate import Pace, estimate_job
from stream_app.jobs.tasks import DEFAULT_TASK_NAME, PRESETS
from stream_app.running.service import Service


async def estimate_batch(request: Request) -> Response:
    """The same body as POST /api/v1/batch (JSON, NDJSON or CSV) -> 200 `{"records",
    "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_read_input_tokens", "cost_usd", "cost_usd_without_caching", "max_cost_usd",
    "duration_seconds", "output_basis", "task", "model"}` (tokens; USD; seconds). Nothing
    is produced and no model is called: see `stream_app.jobs.estimate` for how. Errors as for
    POST /api/v1/batch (400, 413, 422 `validation_error` / `unsupported_schema` /
    `unknown_task`)."""
    caller_of(request)
    service: Service = request.state.service
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in STREAMED_TYPES:
        spool_dir = service.settings.batch_job_storage_path
        spool_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool_dir, prefix="estimate-") as spool:
            count, options = await spool_records(request, spool, service, media_type)
            chars = _spooled_text_chars(spool)
    else:
        count, chars, options = _json_body(await read_json_body(request, service.settings), service)
    return JSONResponse(_estimate(service, options, count, chars))


def _json_body(body: bytes, service: Service) -> tuple[int, int, JobOptions]:
    batch = parse_batch(body, service.settings)
    options = request_options(batch, service)
    return len(batch.records), sum(len(r.text) for r in batch.records), options


def _spooled_text_chars(spool: IO[bytes]) -> int:
    spool.seek(0)
    return sum(len(orjson.loads(line)["text"]) for line in spool)


def _estimate(service: Service, options: JobOptions, count: int, chars: int) -> dict[str, object]:
    settings = service.settings
    rules = service.rules
    task = rules.prepare(options.task, options.task_name)
    owned = len(service.owned_partitions()) or settings.kafka_partitions
    # Records of a job spread over all partitions: this worker's share of the cluster.
    workers = settings.kafka_partitions / owned
    pace = Pace(
        requests_per_minute=service.budget.requests_per_minute,
        concurrent_calls=max(1, round(settings.batch_max_concurrent_llm_calls * workers)),
        latency_seconds=rules.history.latency_seconds(),
        backlog_records=round(_backlog(service.pipeline.jobs()) * workers),
    )
    estimate = estimate_job(
        task,
        records=count,
        text_chars=chars,
        price=rules.price_of(task.model),
        history=rules.history,
        pace=pace,
        now=time.time(),
    )
    return {
        **estimate.as_json(),
        "max_cost_usd": options.max_cost_usd,
        "task": task.name,
        "model": task.model,
    }


def _backlog(jobs: list[JobStatus]) -> int:
    """Records of this worker's unfinished jobs that have no outcome yet."""
    return sum(
        max(0, (job.total_records or 0) - job.outcomes)
        for job in jobs
        if job.status in ("pending", "running")
    )


async def list_tasks(request: Request) -> Response:
    """200 `{"default": name, "presets": {name: {"instructions", "output_schema"}}}`."""
    caller_of(request)
    presets = {name: spec.model_dump(exclude_none=True) for name, spec in PRESETS.items()}
    return JSONResponse({"default": DEFAULT_TASK_NAME, "presets": presets})
