"""GET /api/v1/batch/jobs: one job list, whichever worker is asked.

Each worker holds the jobs of the partitions it owns and standby replicas of others'
(TABLE_STANDBY_REPLICAS). The worker asked lists what it holds, asks every other worker
that owns job partitions for theirs (one forwarded request each, in parallel), and keeps
one summary per job: the owner's (current) over a replica's (stale), the latest change
otherwise. A worker that does not answer (it died, the group has not rebalanced yet) is
covered by the replicas the worker asked keeps of its partitions, marked stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access import caller_of, visible
from api.forwarding import FORWARD_TIMEOUT, FORWARDED, forward_headers
from api.views import job_summary
from stream_app.running.service import Service


def merge_job_lists(lists: Iterable[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One summary per `job_id` out of several workers' lists, oldest job first (by
    `created_at`, then `job_id`). A current summary (`stale` false: from the job's owner)
    wins over a stale one (a standby replica); among equals the one changed last
    (`updated_at`, ISO 8601 UTC strings, which sort as times), then the one with more
    outcomes."""
    best: dict[str, dict[str, Any]] = {}
    for summaries in lists:
        for summary in summaries:
            known = best.get(summary["job_id"])
            if known is None or _rank(summary) > _rank(known):
                best[summary["job_id"]] = summary
    return sorted(best.values(), key=lambda s: (s.get("created_at") or "", s["job_id"]))


def _rank(summary: dict[str, Any]) -> tuple[bool, str, int]:
    outcomes = sum(
        summary.get(name) or 0 for name in ("completed_count", "failed_count", "skipped_count")
    )
    return (not summary.get("stale", False), summary.get("updated_at") or "", outcomes)


async def list_jobs(request: Request) -> Response:
    """GET /api/v1/batch/jobs

    `{"jobs": [job summaries as in /status, without results], "count", "stale",
    "tenant_budget"?: {"tenant", "budget_usd", "spent_usd", "month", "exhausted"}}`: every
    job visible to the caller (with API_KEYS, only its own), the same list whichever
    worker is asked. `stale` is true when a worker owning job partitions did not answer:
    its jobs then come from this worker's standby replicas (each marked `stale` with
    `as_of`), and jobs on partitions of which this worker holds no replica are missing.
    Errors: 401 `unauthorized`.
    """
    caller = caller_of(request)
    service: Service = request.state.service
    held = [
        job_summary(job, service, stale=not current)
        for job, current in service.held_jobs()
        if visible(job, caller)
    ]
    if request.headers.get(FORWARDED):
        return JSONResponse({"jobs": held, "count": len(held), "stale": False})
    budget = service.rules.tenant_budget(caller)
    extra = {"tenant_budget": budget} if budget is not None else {}
    peers = [url for url in service.worker_urls() if not service.is_local(url)]
    answers = await asyncio.gather(*(_jobs_of(request, url) for url in peers))
    jobs = merge_job_lists([held, *(answer for answer in answers if answer is not None)])
    stale = any(answer is None for answer in answers)
    return JSONResponse({"jobs": jobs, "count": len(jobs), "stale": stale, **extra})


async def _jobs_of(request: Request, url: str) -> list[dict[str, Any]] | None:
    """The jobs another worker holds; None when it does not answer with them."""
    http: httpx.AsyncClient = request.state.http
    try:
        reply = await http.get(
            f"{url}/api/v1/batch/jobs", headers=forward_headers(request), timeout=FORWARD_TIMEOUT
        )
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    jobs: list[dict[str, Any]] = reply.json()["jobs"]
    return jobs
