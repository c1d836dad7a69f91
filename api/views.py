"""A job and its results as the API shows them: the status summary (GET .../status, the job
list, the event stream's progress and end events) and one result's view."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from stream_app.jobs.aggregation import JobStatus
from stream_app.running.service import Service


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat()


def job_summary(
    job: JobStatus, service: Service | None = None, *, stale: bool = False
) -> dict[str, Any]:
    """A job's summary as the API shows it (status, list, events). `stale`: read from a
    standby replica because the owner did not answer; `as_of` then says up to when the
    replica holds the job's changes (its last change, ISO 8601 UTC)."""
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status,
        "total_records": job.total_records,
        "completed_count": job.completed_count,
        "failed_count": job.failed_count,
        "skipped_count": job.skipped_count,
        "total_tokens_used": job.total_tokens_used,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "cache_creation_input_tokens": job.cache_creation_input_tokens,
        "cache_read_input_tokens": job.cache_read_input_tokens,
        # The float is rounded to 8 decimals for JSON clients; the string is exact.
        "estimated_cost": float(round(job.estimated_cost, 8)),
        "estimated_cost_usd": format(job.estimated_cost, "f"),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "cancelled_at": _iso(job.cancelled_at),
        "task": job.task,
        "model": job.model,
        "max_cost_usd": float(job.max_cost_usd) if job.max_cost_usd is not None else None,
        "priority": job.priority or "normal",
        "lane": job.lane or "live",
        "lane_reason": job.lane_reason,
        "deadline": job.deadline,
        "saving_usd": format(job.saving_usd, "f"),
        "stale": stale,
        "retries": job.retries,
    }
    if stale:
        summary["as_of"] = _iso(job.updated_at if job.updated_at is not None else job.created_at)
    lane = service.pipeline.lane if service is not None else None
    if lane is not None and job.lane == "batch":
        summary["provider_batches"] = lane.provider_batches(job.job_id)
        # Records sent to the live lane to make the job's deadline (records).
        summary["moved_to_live_lane"] = lane.moved_live(job.job_id)
        if summary.get("status") == "pending" and summary["provider_batches"]:
            # Its records are with the provider already: it runs, before its first outcome.
            summary["status"] = "running"
    if service is not None and job.status in ("pending", "running"):
        # What this worker's calls to Claude meet now, and whether the job moves at all.
        summary["provider"] = service.breaker.report()
        summary["stalled"] = job.stalled(time.time(), service.settings.batch_stall_after_seconds)
    return summary


def _tokens_used(stored: dict[str, Any]) -> int:
    return sum(
        stored.get(name, 0)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    )


def result_view(stored: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"index": stored["index"], "success": stored["success"]}
    if "response" in stored:
        view["response"] = stored["response"]
    if "error" in stored:
        view["error"] = stored["error"]
    if stored.get("skipped"):
        view["skipped"] = True
        if stored.get("skip_reason"):
            view["skip_reason"] = stored["skip_reason"]
    if stored.get("record_id") is not None:
        view["record_id"] = stored["record_id"]
    if stored.get("input_metadata"):
        view["input_metadata"] = stored["input_metadata"]
    view["tokens_used"] = _tokens_used(stored)
    view["attempts"] = stored.get("attempts", 0)
    return view
