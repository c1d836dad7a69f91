"""A small job sent behind a backlog of a given depth: how long it waits, FIFO against fair.

`python -m bench.fairness` runs one scenario per scheduling mode (BATCH_SCHEDULING=fifo,
then fair) and backlog depth (`--depths`, records of a big job ahead: 0, 2,000, 20,000 and
100,000 by default). Each gets a fresh Claude simulator enforcing `--rpm`, a fresh Kafka
namespace on one embedded Apache Kafka and one worker; the big job is submitted, and once
it has outcomes a job of `--small` records follows. Reported: the small job's time to
first result and to completion (from its submission; "> N s" past `--max-wait`), the
big job's outcomes by then, and the run's 429s. With fair scheduling a big job's records
go to the bulk record topic and the small job's are read at once (docs/fairness.md);
FIFO keeps one queue in publication order, so the small job waits for the backlog.

Progress goes to stderr; stdout holds only the table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
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
DEFAULT_DEPTHS = (0, 2_000, 20_000, 100_000)


@dataclass(frozen=True)
class Options:
    rpm: int
    depths: tuple[int, ...]
    small: int
    modes: tuple[str, ...]
    max_wait: float
    json: bool


@dataclass
class Result:
    mode: str
    rpm: int
    big_records: int
    small_records: int
    first_result_s: float | None
    completion_s: float | None
    max_wait_s: float
    big_done_at_small_completion: int
    rate_limited: int


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--rpm", type=int, default=1200, help="provider requests per minute")
    parser.add_argument(
        "--depths",
        default=",".join(str(d) for d in DEFAULT_DEPTHS),
        help="records of the big job ahead of the small one, one scenario each",
    )
    parser.add_argument("--small", type=int, default=40, help="records of the small job")
    parser.add_argument("--modes", default="fifo,fair", help="BATCH_SCHEDULING values to run")
    parser.add_argument(
        "--max-wait", type=float, default=150.0, help="seconds the small job is waited for"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    depths = tuple(int(d) for d in args.depths.split(",") if d.strip())
    return Options(args.rpm, depths, args.small, modes, args.max_wait, args.json)


def ndjson(label: str, count: int) -> Iterator[bytes]:
    for i in range(count):
        yield f'{{"text": "{label} {i}: a customer writes that the delivery was late."}}\n'.encode()


def submit(worker: ServiceProcess, label: str, count: int) -> str:
    reply = httpx.post(
        f"{worker.base_url}/api/v1/batch",
        content=b"".join(ndjson(label, count)),
        headers={"content-type": "application/x-ndjson"},
        timeout=600.0,
    )
    if reply.status_code != 202:
        raise RuntimeError(f"submit failed: {reply.status_code} {reply.text[:500]}")
    job_id: str = reply.json()["job_id"]
    return job_id


def outcomes(body: dict[str, Any] | None) -> int:
    if body is None:
        return 0
    return int(body["completed_count"]) + int(body["failed_count"])


def run_mode(mode: str, depth: int, opts: Options, broker: str, workdir: Path) -> Result:
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
        workers.append(start_service(env, workdir, wait=False))
        worker = workers[0]
        worker.wait_ready(timeout=120.0)
        progress(f"{mode}: worker ready; {depth} records ahead, then {opts.small}")
        big: str | None = None
        if depth:
            big = submit(worker, "Big", depth)
            wait_until(
                lambda: outcomes(job_status(worker, big)) >= 10, timeout=300, what="big job started"
            )
        submitted = time.monotonic()
        small = submit(worker, "Small", opts.small)
        first: float | None = None
        done: float | None = None
        deadline = submitted + opts.max_wait
        while time.monotonic() < deadline and done is None:
            worker.ensure_alive()
            body = job_status(worker, small)
            now = time.monotonic() - submitted
            if first is None and outcomes(body) > 0:
                first = now
            if body is not None and body["status"] == "completed":
                done = now
            time.sleep(POLL_S)
        big_done = 0 if big is None else outcomes(job_status(worker, big))
        progress(f"{mode} {depth}: first result {first} s, completed {done} s; big {big_done}")
        rate_limited = sum(1 for r in simulator.stats()["requests"] if r["status"] == 429)
    return Result(
        mode=mode,
        rpm=opts.rpm,
        big_records=depth,
        small_records=opts.small,
        first_result_s=None if first is None else round(first, 2),
        completion_s=None if done is None else round(done, 2),
        max_wait_s=opts.max_wait,
        big_done_at_small_completion=big_done,
        rate_limited=rate_limited,
    )


def _seconds(value: float | None, max_wait: float) -> str:
    return f"> {max_wait:.0f} s" if value is None else f"{value:.1f} s"


def rows(results: list[Result]) -> list[list[str]]:
    """[figure, value, target] rows for `python -m bench`'s one table."""
    out = []
    for r in results:
        first = _seconds(r.first_result_s, r.max_wait_s)
        done = _seconds(r.completion_s, r.max_wait_s)
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
        "| scheduling | rpm | records ahead | small job | first result | completed "
        "| big outcomes by then | 429s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = _seconds(r.first_result_s, r.max_wait_s)
        done = _seconds(r.completion_s, r.max_wait_s)
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
            for depth in opts.depths:
                results.append(run_mode(mode, depth, opts, broker, workdir / f"{mode}-{depth}"))
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
