"""`python -m bench.lanes`: the live lane against the batch lane on one large job.

The live lane is projected (its duration is set by the request budget, not by this
machine): `records / CLAUDE_REQUESTS_PER_MINUTE` minutes at the list price. The batch lane
is measured: one worker on Apache Kafka runs the job through the simulator's Message
Batches API, whose batches take `--provider-seconds` (default 3.6 s: the provider's typical
hour scaled by 1/1000). Reported: the provider batches created and their sizes, time to the
first partial result and to the last, measured and with the provider's hour put back (every
provider batch runs in parallel, so each time is what the service spent plus one hour), the
job's cost at batch rates and at live prices.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    bench_main,
    job_status,
    namespace_env,
    progress,
    start_broker,
    start_simulator_process,
    start_worker,
    stop_workers,
    wait_cluster_ready,
)
from stream_app.running.testing import wait_until

PROVIDER_TYPICAL_SECONDS = 3600.0
TEXT = "Ticket {i}: the parcel came late, the box was damaged and support never answered."


@dataclass
class Figures:
    records: int
    requests_per_minute: int
    live_projected_seconds: float
    provider_seconds: float
    batches: int
    batch_sizes: list[int]
    first_result_seconds: float
    last_result_seconds: float
    cost_usd: str
    live_cost_usd: str

    @property
    def first_scaled(self) -> float:
        return self.first_result_seconds - self.provider_seconds + PROVIDER_TYPICAL_SECONDS

    @property
    def last_scaled(self) -> float:
        return self.last_result_seconds - self.provider_seconds + PROVIDER_TYPICAL_SECONDS


def run(records: int, rpm: int, provider_seconds: float, max_requests: int) -> Figures:
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(stack, workdir)
        simulator, _ = start_simulator_process(stack)
        simulator.configure(batch_processing_seconds=provider_seconds)
        env = {
            **namespace_env("lanes", broker, simulator),
            "CLAUDE_REQUESTS_PER_MINUTE": str(rpm),
            "BATCH_LANE_MAX_REQUESTS": str(max_requests),
            "BATCH_LANE_POLL_SECONDS": "0.5",
        }
        worker = start_worker(env, workdir / "w0")
        stack.callback(stop_workers, [worker])
        wait_cluster_ready([worker])
        body = (
            b'{"job": {"lane": "batch"}}\n'
            + "\n".join(f'{{"text": "{TEXT.format(i=i)}"}}' for i in range(records)).encode()
            + b"\n"
        )
        progress(f"submitting {records} records to the batch lane")
        began = time.monotonic()
        with httpx.Client(base_url=worker.base_url, timeout=300) as client:
            reply = client.post(
                "/api/v1/batch", content=body, headers={"content-type": "application/x-ndjson"}
            )
            reply.raise_for_status()
            job_id = reply.json()["job_id"]
        first: list[float] = []

        def done() -> dict[str, Any] | None:
            job = job_status(worker, job_id)
            if job is None:
                return None
            if job["completed_count"] and not first:
                first.append(time.monotonic() - began)
                progress(f"first results: {job['completed_count']}")
            return job if job["status"] == "completed" else None

        job = wait_until(done, timeout=3600, interval=0.5, what="the batch-lane job")
        last = time.monotonic() - began
        cost = Decimal(job["estimated_cost_usd"])
        stats = simulator.stats()
        return Figures(
            records=records,
            requests_per_minute=rpm,
            live_projected_seconds=records * 60 / rpm,
            provider_seconds=provider_seconds,
            batches=stats["batches_created"],
            batch_sizes=[b["requests"] for b in stats["batches"]],
            first_result_seconds=round(first[0] if first else last, 1),
            last_result_seconds=round(last, 1),
            cost_usd=format(cost, "f"),
            live_cost_usd=format(cost + Decimal(job["saving_usd"]), "f"),
        )


def to_text(f: Figures, host: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{f.records} records; live lane at {f.requests_per_minute} requests/minute "
            f"(projected): {f.live_projected_seconds / 3600:.1f} h, ${f.live_cost_usd}",
            f"batch lane (measured, {f.batches} provider batches of {f.provider_seconds:g} s, "
            f"{min(f.batch_sizes, default=0)}-{max(f.batch_sizes, default=0)} requests each): "
            f"first result {f.first_result_seconds:.1f} s, last {f.last_result_seconds:.1f} s, "
            f"${f.cost_usd} ({Decimal(f.cost_usd) / Decimal(f.live_cost_usd):.2f} of live)",
            f"batch lane with the provider's typical hour: first result "
            f"{f.first_scaled / 3600:.2f} h, last {f.last_scaled / 3600:.2f} h",
            f"machine: {host}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lanes", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rpm", type=int, default=50)
    parser.add_argument("--provider-seconds", type=float, default=3.6)
    parser.add_argument("--max-requests", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return bench_main(
        lambda: run(args.records, args.rpm, args.provider_seconds, args.max_requests),
        as_json=args.json,
        to_json=lambda f, host: {
            **f.__dict__,
            "first_scaled_seconds": f.first_scaled,
            "last_scaled_seconds": f.last_scaled,
            "machine": host,
        },
        to_text=to_text,
    )


if __name__ == "__main__":
    raise SystemExit(main())
