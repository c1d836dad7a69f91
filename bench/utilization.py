"""How much of the provider's request budget the cluster uses when that budget binds.

`python -m bench.utilization` runs one scenario per worker count (1 and 2 by default). Each
scenario gets a fresh Claude simulator (a process of its own) that enforces the provider's
real limit (`--rpm`), a fresh Kafka namespace on one shared embedded broker, and N
`python -m stream_app` workers that all claim the same CLAUDE_REQUESTS_PER_MINUTE. One
oversized batch keeps the budget binding; everything is measured from what the simulator
saw, so the service is a black box.

Progress goes to stderr; stdout holds only the table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    bench_main,
    cpu_seconds,
    job_status,
    namespace_env,
    progress,
    render,
    results_json,
    start_broker,
    start_simulator_process,
    start_worker,
    stop_workers,
    wait_cluster_ready,
)
from simulator import SimulatorConfig
from simulator.testing import SimulatorHandle, max_in_window
from stream_app.running.testing import ServiceProcess, wait_until

# Fixed by the brief so runs on different machines and commits compare.
CONCURRENCY = 8
PARTITIONS = 8
LATENCY_MS = 40.0
# Submit this much more than the measured period can accept, so supply never runs out.
OVERSUPPLY = 1.3


@dataclass(frozen=True)
class Options:
    workers: tuple[int, ...]
    rpm: int
    seconds: float
    warmup: float
    json: bool
    # The calls: mean latency and +- jitter (ms), the call-slot ceiling, and the provider's
    # shorter window (its share of the minute over that many seconds; None: only 60 s).
    latency_ms: float = LATENCY_MS
    latency_jitter_ms: float = 0.0
    concurrency: int = CONCURRENCY
    short_window_seconds: float | None = None

    @property
    def records(self) -> int:
        return math.ceil(self.rpm * (self.seconds + self.warmup) / 60 * OVERSUPPLY)


def parse_workers(raw: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in raw.split(",") if part.strip())
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive counts like 1,2")
    return counts


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.utilization", description=__doc__)
    parser.add_argument("--workers", type=parse_workers, default=(1, 2), help="e.g. 1,2")
    parser.add_argument("--rpm", type=int, default=300, help="provider requests per minute")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured period")
    parser.add_argument("--warmup", type=float, default=10.0, help="ignored start of the run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    return Options(args.workers, args.rpm, args.seconds, args.warmup, args.json)


def submit(worker: ServiceProcess, count: int) -> str:
    texts = [
        f"Record {i}: the quarterly report for region {i % 7} notes steady growth, "
        f"two supplier delays and a hiring plan for {10 + i % 20} engineers."
        for i in range(count)
    ]
    reply = httpx.post(
        f"{worker.base_url}/api/v1/batch",
        json={"records": [{"text": t} for t in texts]},
        timeout=120.0,
    )
    if reply.status_code != 202:
        raise RuntimeError(f"submit failed: {reply.status_code} {reply.text[:500]}")
    job_id: str = reply.json()["job_id"]
    return job_id


def wait_job(
    workers: list[ServiceProcess], job_id: str, timeout: float
) -> tuple[dict[str, Any], int]:
    """The job's last status and which worker gave it: completed, or as far as it got.

    Every worker is asked, the submitting one first: a non-owner should forward to the
    job's owner, but if it does not, completion must still be observed (and is reported).
    """
    last: dict[str, Any] = {}
    answered = [-1]

    def completed() -> bool:
        for index, worker in enumerate(workers):
            worker.ensure_alive()
            body = job_status(worker, job_id)
            if body is not None:
                last.update(body)
                answered[0] = index
                break
        return last.get("status") == "completed"

    try:
        wait_until(completed, timeout=timeout, interval=0.5, what=f"job {job_id}")
    except TimeoutError:
        progress(f"job {job_id} not completed after {timeout:.0f} s: {last.get('status')}")
    if answered[0] > 0:
        progress(f"status came from worker {answered[0]}; the submitting worker had none")
    return last, answered[0]


@dataclass
class Result:
    workers: int
    rpm: int
    measure_s: float
    warmup_s: float
    records: int
    accepted: int
    utilization: float
    calls: int
    rate_limited: int
    rate_limited_share: float
    max_60s: int
    # All attempts, not only 200s: the simulator caps 200s at rpm, so overshoot shows here.
    max_attempts_60s: int
    max_5s: int
    bound_5s: int
    # Most calls the provider held at once (from arrival to answer).
    max_in_flight: int
    # The workers' CPU time over the run, in cores (1.0: one core busy all along), and the
    # machine's 1-minute load average at the end: a starved worker shows here.
    worker_cores: float
    load_average: float
    window_covered: bool
    completed: bool
    completed_count: int
    failed_count: int
    by_status: dict[str, int]
    # Index of the worker whose API reported the job (0 = the one it was submitted to).
    status_from: int
    startup_s: float
    run_s: float


def measure(stats: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Utilization and burst numbers from one simulator snapshot (arrival times `t`)."""
    requests = stats["requests"]
    if not requests:
        raise RuntimeError("the simulator saw no requests")
    arrivals = [r["t"] for r in requests]
    ok = [r["t"] for r in requests if r["status"] == 200]
    start = min(arrivals) + opts.warmup
    end = start + opts.seconds
    accepted = sum(1 for t in ok if start <= t <= end)
    rate_limited = sum(1 for r in requests if r["status"] == 429)
    # Same function SimulatorHandle.max_requests_in_window uses, on the same snapshot.
    return {
        "accepted": accepted,
        "utilization": accepted / (opts.rpm * opts.seconds / 60),
        "calls": len(requests),
        "rate_limited": rate_limited,
        "rate_limited_share": rate_limited / len(requests),
        "max_60s": max_in_window(ok, 60),
        "max_attempts_60s": max_in_window(arrivals, 60),
        "max_5s": max_in_window(ok, 5),
        "max_in_flight": max_in_flight(requests),
        "bound_5s": math.ceil(opts.rpm * 5 / 60) + 1,
        # False means supply ran out before the window ended: utilization is understated.
        "window_covered": max(arrivals) >= end,
        "by_status": stats["by_status"],
    }


def max_in_flight(requests: list[dict[str, Any]]) -> int:
    """Most requests between arrival (`t`) and answer (`t_done`) at any moment."""
    edges = sorted(
        [(r["t"], 1) for r in requests] + [(r.get("t_done", r["t"]), -1) for r in requests],
        key=lambda edge: (edge[0], edge[1]),
    )
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def shared_env(opts: Options, broker: str, simulator: SimulatorHandle) -> dict[str, str]:
    """Settings every worker of one scenario shares: one app id, one topic set, one budget."""
    return {
        **namespace_env("bench", broker, simulator),
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "CLAUDE_REQUESTS_PER_MINUTE": str(opts.rpm),
        "BATCH_MAX_CONCURRENT_LLM_CALLS": str(opts.concurrency),
    }


def run_scenario(count: int, opts: Options, broker: str, workdir: Path) -> Result:
    config = SimulatorConfig(
        requests_per_minute=opts.rpm,
        latency_ms=opts.latency_ms,
        latency_jitter_ms=opts.latency_jitter_ms,
        requests_short_window_seconds=opts.short_window_seconds,
    )
    with ExitStack() as stack:
        # A process of its own: at 100 calls/s it must not share the GIL with the polling.
        simulator, _ = start_simulator_process(stack)
        simulator.configure(**config.model_dump(exclude_defaults=True))
        env = shared_env(opts, broker, simulator)
        workers: list[ServiceProcess] = []
        # Registered before the first start so a failure halfway still stops the rest.
        stack.callback(stop_workers, workers)
        began = time.monotonic()
        for i in range(count):
            workers.append(start_worker(env, workdir / f"worker{i}"))
        progress(f"{count} worker(s) started; waiting for all to be ready and settled")
        wait_cluster_ready(workers)
        startup = time.monotonic() - began
        progress(f"ready after {startup:.1f} s; submitting {opts.records} records")

        began = time.monotonic()
        cpu_before = sum(cpu_seconds(w.process.pid) for w in workers)
        job_id = submit(workers[0], opts.records)
        # Expected drain time at the budget, plus room for a slow machine.
        timeout = opts.records / (opts.rpm / 60) * 1.5 + 30
        final, status_from = wait_job(workers, job_id, timeout)
        run = time.monotonic() - began
        worker_cores = (sum(cpu_seconds(w.process.pid) for w in workers) - cpu_before) / run
        progress(f"job {final.get('status')} after {run:.1f} s")
        numbers = measure(simulator.stats(), opts)

    return Result(
        workers=count,
        rpm=opts.rpm,
        measure_s=opts.seconds,
        warmup_s=opts.warmup,
        records=opts.records,
        completed=final.get("status") == "completed",
        completed_count=int(final.get("completed_count") or 0),
        failed_count=int(final.get("failed_count") or 0),
        status_from=status_from,
        startup_s=round(startup, 1),
        run_s=round(run, 1),
        worker_cores=round(worker_cores, 2),
        load_average=round(os.getloadavg()[0], 1),
        **numbers,
    )


def failed_cell(result: Result) -> str:
    if result.completed:
        return str(result.failed_count)
    done = result.completed_count + result.failed_count
    return f"{result.failed_count} (incomplete {done}/{result.records})"


def table(results: list[Result], host: dict[str, str | int]) -> str:
    header = [
        "workers",
        "rpm",
        "measured s",
        "accepted",
        "utilization %",
        "429s (share)",
        "max/60s",
        "max/5s (bound)",
        "failed",
    ]
    rows = [
        [
            str(r.workers),
            str(r.rpm),
            f"{r.measure_s:g}",
            str(r.accepted),
            f"{r.utilization * 100:.1f}" + ("" if r.window_covered else " (short)"),
            f"{r.rate_limited} ({r.rate_limited_share * 100:.1f}%)",
            str(r.max_60s),
            f"{r.max_5s} ({r.bound_5s})",
            failed_cell(r),
        ]
        for r in results
    ]
    footer = (
        f"machine: nproc={host['nproc']} cpu={host['cpu']} python={host['python']} "
        f"date={host['date']}"
    )
    return "\n".join([*render(header, rows), *notes(results), footer])


def rows(results: list[Result]) -> list[list[str]]:
    """[figure, value, target] rows for `python -m bench`'s one table."""
    out = []
    for r in results:
        w = f"{r.workers}w at {r.rpm} rpm"
        share = f"{r.utilization * 100:.1f} %" + ("" if r.window_covered else " (short)")
        out += [
            [f"{w}: budget used ({r.measure_s:g} s)", share, "~100 %"],
            [f"{w}: 429s, failed", f"{r.rate_limited}, {failed_cell(r)}", "0, 0"],
        ]
    return out


def notes(results: list[Result]) -> list[str]:
    """Caveats a reader of the bare numbers would otherwise miss."""
    found = []
    for r in results:
        if not r.window_covered:
            found.append(f"note: {r.workers}w: requests stopped before the window ended")
        if r.status_from > 0:
            found.append(
                f"note: {r.workers}w: the submitting worker never reported the job; "
                f"worker {r.status_from} did (status forwarding to the owner did not happen)"
            )
    return found


def run(opts: Options) -> list[Result]:
    results: list[Result] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-util-")))
        broker = start_broker(stack, workdir)
        progress(f"{opts.records} records per scenario")
        for n, count in enumerate(opts.workers):
            scenario_dir = workdir / f"scenario{n}-{count}w"
            results.append(run_scenario(count, opts, broker, scenario_dir))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    return bench_main(
        lambda: run(opts),
        as_json=opts.json,
        to_json=results_json,
        to_text=table,
    )


if __name__ == "__main__":
    sys.exit(main())
