"""A small job sent behind big ones: how long it waits, FIFO (before) against fair (after).

`python -m bench.fairness` runs one scenario per scheduling mode (BATCH_SCHEDULING=fifo,
then fair). Each gets a fresh Claude simulator enforcing `--rpm`, a fresh Kafka namespace
on one embedded Apache Kafka and one worker; `--big-jobs` jobs of `--big` records are
submitted, and once the first has outcomes a job of `--small` records follows. Reported:
the small job's time to first result and to completion (from its submission), the big
jobs' progress at that moment, and the run's 429s.

Progress goes to stderr; stdout holds only the table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
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
    job_status,
    namespace_env,
    progress,
    results_json,
    start_broker,
    stop_workers,
)
from simulator import SimulatorConfig
from simulator.testing import run_simulator
from stream_app.running.testing import ServiceProcess, start_service, wait_until

CONCURRENCY = 5
PARTITIONS = 8
LATENCY_MS = 40.0
POLL_S = 0.05


@dataclass(frozen=True)
class Options:
    rpm: int
    big: int
    big_jobs: int
    small: int
    modes: tuple[str, ...]
    json: bool


@dataclass
class Result:
    mode: str
    rpm: int
    big_records: int
    small_records: int
    first_result_s: float | None
    completion_s: float | None
    big_done_at_small_completion: int
    rate_limited: int


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--rpm", type=int, default=600, help="provider requests per minute")
    parser.add_argument("--big", type=int, default=600, help="records of each big job")
    parser.add_argument("--big-jobs", type=int, default=1, help="big jobs ahead of the small one")
    parser.add_argument("--small", type=int, default=5, help="records of the small job")
    parser.add_argument("--modes", default="fifo,fair", help="BATCH_SCHEDULING values to run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    return Options(args.rpm, args.big, args.big_jobs, args.small, modes, args.json)


def submit(worker: ServiceProcess, label: str, count: int) -> str:
    texts = [
        f"{label} {i}: a customer writes that the delivery was late again." for i in range(count)
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


def outcomes(body: dict[str, Any] | None) -> int:
    if body is None:
        return 0
    return int(body["completed_count"]) + int(body["failed_count"])


def run_mode(mode: str, opts: Options, broker: str, workdir: Path) -> Result:
    config = SimulatorConfig(requests_per_minute=opts.rpm, latency_ms=LATENCY_MS)
    with ExitStack() as stack:
        simulator = stack.enter_context(run_simulator(config))
        env = {
            **namespace_env("fair", broker, simulator),
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "CLAUDE_REQUESTS_PER_MINUTE": str(opts.rpm),
            "BATCH_MAX_CONCURRENT_LLM_CALLS": str(CONCURRENCY),
            "BATCH_SCHEDULING": mode,
            "BATCH_SHUTDOWN_TIMEOUT_SECONDS": "5",
        }
        workers: list[ServiceProcess] = []
        stack.callback(stop_workers, workers)
        workers.append(start_service(env, workdir / "worker", wait=False))
        worker = workers[0]
        worker.wait_ready(timeout=120.0)
        progress(f"{mode}: worker ready; {opts.big_jobs} x {opts.big} records, then {opts.small}")
        big = [submit(worker, f"Big{n}", opts.big) for n in range(opts.big_jobs)]
        wait_until(
            lambda: outcomes(job_status(worker, big[0])) >= 10, timeout=120, what="big job started"
        )
        submitted = time.monotonic()
        small = submit(worker, "Small", opts.small)
        first: float | None = None
        done: float | None = None
        # FIFO: the small job waits for every big record before it, at the budget's pace.
        deadline = submitted + opts.big * opts.big_jobs / (opts.rpm / 60) * 1.5 + 60
        while time.monotonic() < deadline and done is None:
            worker.ensure_alive()
            body = job_status(worker, small)
            now = time.monotonic() - submitted
            if first is None and outcomes(body) > 0:
                first = now
            if body is not None and body["status"] == "completed":
                done = now
            time.sleep(POLL_S)
        big_done = sum(outcomes(job_status(worker, job)) for job in big)
        progress(f"{mode}: first result {first} s, completed {done} s; big outcomes {big_done}")
        rate_limited = sum(1 for r in simulator.stats()["requests"] if r["status"] == 429)
    return Result(
        mode=mode,
        rpm=opts.rpm,
        big_records=opts.big * opts.big_jobs,
        small_records=opts.small,
        first_result_s=None if first is None else round(first, 2),
        completion_s=None if done is None else round(done, 2),
        big_done_at_small_completion=big_done,
        rate_limited=rate_limited,
    )


def rows(results: list[Result]) -> list[list[str]]:
    """[figure, value, target] rows for `python -m bench`'s one table."""
    out = []
    for r in results:
        first = "-" if r.first_result_s is None else f"{r.first_result_s:.1f} s"
        done = "not in time" if r.completion_s is None else f"{r.completion_s:.1f} s"
        out.append(
            [
                f"{r.mode}: {r.small_records}-record job behind {r.big_records}",
                f"first result {first}, completed {done}",
                "",
            ]
        )
    return out


def table(results: list[Result], host: dict[str, str | int]) -> str:
    lines = [
        "| scheduling | rpm | big records ahead | small job | first result | completed "
        "| big outcomes by then | 429s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = "-" if r.first_result_s is None else f"{r.first_result_s:.1f} s"
        done = "not in time" if r.completion_s is None else f"{r.completion_s:.1f} s"
        lines.append(
            f"| {r.mode} | {r.rpm} | {r.big_records} | {r.small_records} | {first} | {done} "
            f"| {r.big_done_at_small_completion} | {r.rate_limited} |"
        )
    lines.append("")
    lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in host.items()))
    return "\n".join(lines)


def run(opts: Options) -> list[Result]:
    results: list[Result] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fair-")))
        broker = start_broker(stack, workdir)
        for mode in opts.modes:
            results.append(run_mode(mode, opts, broker, workdir / mode))
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
