"""POST /api/v1/batch/estimate: what a batch would cost and take, without running it; and
GET /api/v1/tasks: the task presets."""

from __future__ import annotations

import random
import tempfile
import time
from typing import IO, Any

import anthropic
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access import caller_of
from api.bodies import STREAMED_TYPES, BodyType, body_type, parse_batch, read_json_body
from api.job_options import JobOptions, request_options, with_query_options
from api.streams import spool_records
from stream_app.core.exceptions import first_line
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import JobStatus
from stream_app.jobs.estimate import CountedPrompts, Estimate, Pace, estimate_job
from stream_app.jobs.lanes import BATCH_TYPICAL_SECONDS, parse_deadline
from stream_app.jobs.tasks import DEFAULT_TASK_NAME, PRESETS
from stream_app.provider.request import PreparedTask
from stream_app.running.service import Service

log = get_logger(__name__)


async def estimate_batch(request: Request) -> Response:
    """The same body as POST /api/v1/batch (JSON, NDJSON or CSV) -> 200 `{"records",
    "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_read_input_tokens", "cost_usd", "cost_usd_low", "cost_usd_high",
    "cost_usd_without_caching", "max_cost_usd", "duration_seconds", "input_basis",
    "output_basis", "task", "model", "lane", "lane_reason", "live_cost_usd",
    "saving_usd"}` (tokens; USD; seconds). Nothing is produced and no model is called: the
    provider's token counting (free) counts the prompts of the records, or of a sample of
    ESTIMATE_SAMPLE of them; see `stream_app.jobs.estimate` for the rest. The body's `lane`
    (`auto` resolved as a submit of the same body would be, now) says which lane is priced:
    `lane` and `lane_reason` name it; on the batch lane the cost is at the Message Batches
    rates (half) and the duration the provider's typical batch time (1 h); `live_cost_usd`
    is the same job on the live lane and `saving_usd` the difference (0 on the live lane).
    Errors as for POST /api/v1/batch (400, 413, 422 `validation_error` /
    `unsupported_schema` / `unknown_task`)."""
    caller_of(request)
    service: Service = request.state.service
    kind = body_type(request)
    if kind.media_type in STREAMED_TYPES:
        spool_dir = service.settings.batch_job_storage_path
        spool_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool_dir, prefix="estimate-") as spool:
            count, options = await spool_records(request, spool, service, kind)
            chars, sample = _spooled_texts(spool, count)
    else:
        count, chars, sample, options = _json_body(
            await read_json_body(request, service.settings), service, kind, request.query_params
        )
    task = service.rules.prepare(options.task, options.task_name)
    counted = await _count(service, task, sample)
    return JSONResponse(_estimate(service, options, task, count, chars, counted))


# Records whose prompts are counted for an estimate: all of a job up to this many, else a
# sample of this many (the provider's token counting is free but rate-limited).
ESTIMATE_SAMPLE = 50


def _json_body(
    body: bytes, service: Service, kind: BodyType, params: Any
) -> tuple[int, int, list[str], JobOptions]:
    # Options in the query apply as for a submit (a body's own that differs is a 422).
    batch = with_query_options(parse_batch(body, service.settings, kind), params)
    options = request_options(batch, service)
    texts = [r.text for r in batch.records]
    sample = texts if len(texts) <= ESTIMATE_SAMPLE else _sample(texts, ESTIMATE_SAMPLE)
    return len(texts), sum(len(t) for t in texts), sample, options


def _sample(texts: list[str], size: int) -> list[str]:
    # Seeded by the job's size: the same body gets the same estimate.
    return random.Random(len(texts)).sample(texts, size)


def _spooled_texts(spool: IO[bytes], count: int) -> tuple[int, list[str]]:
    """All the spooled records' characters, and their texts or a sample of them."""
    spool.seek(0)
    rng = random.Random(count)
    chosen = (
        set(range(count))
        if count <= ESTIMATE_SAMPLE
        else set(rng.sample(range(count), ESTIMATE_SAMPLE))
    )
    chars, sample = 0, []
    for index, line in enumerate(spool):
        text = orjson.loads(line)["text"]
        chars += len(text)
        if index in chosen:
            sample.append(text)
    return chars, sample


async def _count(service: Service, task: PreparedTask, sample: list[str]) -> CountedPrompts | None:
    """The provider's token counts for `sample` and for the task's prefix; None when the
    provider (or a gateway before it) does not count tokens: the estimate then goes by
    characters."""
    if not sample:
        return None
    client = service.rules.client
    try:
        counts = await client.count_prompt_tokens([".", *sample], task)
    except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
        log.info("token counting unavailable: estimate from characters", reason=first_line(exc))
        return None
    return CountedPrompts(
        prefix_tokens=max(0, counts[0] - 1),
        tokens=sum(counts[1:]),
        chars=sum(len(t) for t in sample),
        sampled=len(sample),
    )


def _estimate(
    service: Service,
    options: JobOptions,
    task: PreparedTask,
    count: int,
    chars: int,
    counted: CountedPrompts | None,
) -> dict[str, object]:
    settings = service.settings
    rules = service.rules
    owned = len(service.owned_partitions()) or settings.kafka_partitions
    # Records of a job spread over all partitions: this worker's share of the cluster.
    workers = settings.kafka_partitions / owned
    pace = Pace(
        requests_per_minute=service.budget.requests_per_minute,
        concurrent_calls=max(1, round(settings.batch_max_concurrent_llm_calls * workers)),
        latency_seconds=rules.history.latency_seconds(),
        backlog_records=round(_backlog(service.pipeline.jobs()) * workers),
    )
    now = time.time()
    choice = options.lane_choice(count, now)

    def priced(batch_seconds: float | None) -> Estimate:
        return estimate_job(
            task,
            records=count,
            text_chars=chars,
            price=rules.price_of(task.model),
            history=rules.history,
            pace=pace,
            now=now,
            counted=counted,
            batch_seconds=batch_seconds,
        )

    live = priced(None)
    estimate = priced(BATCH_TYPICAL_SECONDS) if choice.lane == "batch" else live
    priced_as = estimate.as_json()
    deadline = parse_deadline(options.deadline) if options.deadline is not None else None
    if choice.lane == "batch" and deadline is not None and deadline - now < BATCH_TYPICAL_SECONDS:
        # Sooner than a provider batch usually takes: expect its records to move to the
        # live lane before the deadline (docs/lanes.md), so it is priced live; the batch
        # price is the low end, if the provider ends its batches early.
        priced_as = {
            **live.as_json(),
            "cost_usd_low": float(round(min(estimate.cost_usd_low, live.cost_usd_low), 6)),
            # It waits for the provider until the live lane must take over: done near the
            # deadline (or when the live lane can be, if that is later).
            "duration_seconds": round(max(live.duration_seconds, deadline - now), 1),
        }
        estimate = live
    return {
        **priced_as,
        "max_cost_usd": options.max_cost_usd,
        "task": task.name,
        "model": task.model,
        "lane": choice.lane,
        "lane_reason": choice.reason,
        "live_cost_usd": float(round(live.cost_usd, 6)),
        "saving_usd": float(round(live.cost_usd - estimate.cost_usd, 6)),
    }


def _backlog(jobs: list[JobStatus]) -> int:
    """Records of this worker's unfinished live-lane jobs that have no outcome yet (the
    batch lane's do not wait for the live budget)."""
    return sum(
        max(0, (job.total_records or 0) - job.outcomes)
        for job in jobs
        if job.status in ("pending", "running") and job.lane != "batch"
    )


async def list_tasks(request: Request) -> Response:
    """200 `{"default": name, "presets": {name: {"instructions", "output_schema"}}}`."""
    caller_of(request)
    presets = {name: spec.model_dump(exclude_none=True) for name, spec in PRESETS.items()}
    return JSONResponse({"default": DEFAULT_TASK_NAME, "presets": presets})
