"""The budget at every tier: how much of it the service uses when calls take 1-3 s.

`python -m bench.tiers` runs one row per tier: 50, 1,000 and 3,000 requests/minute on one
worker, 6,000 on two. Each row is a `bench.utilization` scenario with calls of 2 s +- 1 s
(uniform), a provider that enforces its limit per 60 s and its share of it (rpm / 12) over
any 5 s, and `BATCH_MAX_CONCURRENT_LLM_CALLS=256` as the ceiling: the calls in flight are
the worker's own choice (rate x p90 latency). Utilization is measured from what the
simulator accepted, after a warm-up. About 2 minutes a row plus start-up.

Progress goes to stderr; stdout holds only the table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.harness import bench_main, progress, render, results_json, start_broker
from bench.utilization import Options, Result, failed_cell, run_scenario

# (requests/minute, workers)
TIERS = ((50, 1), (1000, 1), (3000, 1), (6000, 2))
LATENCY_MS = 2000.0
JITTER_MS = 1000.0
CEILING = 256
SHORT_WINDOW = 5.0


def parse_tiers(raw: str) -> tuple[tuple[int, int], ...]:
    """`50x1,6000x2` -> ((50, 1), (6000, 2))."""
    tiers = []
    for part in raw.split(","):
        rpm, _, workers = part.strip().partition("x")
        tiers.append((int(rpm), int(workers or 1)))
    return tuple(tiers)


def options(rpm: int, workers: int, seconds: float, warmup: float) -> Options:
    return Options(
        workers=(workers,),
        rpm=rpm,
        seconds=seconds,
        warmup=warmup,
        json=False,
        latency_ms=LATENCY_MS,
        latency_jitter_ms=JITTER_MS,
        concurrency=CEILING,
        short_window_seconds=SHORT_WINDOW,
    )


def run(tiers: Sequence[tuple[int, int]], seconds: float, warmup: float) -> list[Result]:
    results: list[Result] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tiers-")))
        broker = start_broker(stack, workdir)
        for n, (rpm, workers) in enumerate(tiers):
            opts = options(rpm, workers, seconds, warmup)
            progress(f"tier {rpm} rpm, {workers} worker(s): {opts.records} records")
            try:
                result = run_scenario(workers, opts, broker, workdir / f"tier{n}")
            except (TimeoutError, RuntimeError) as exc:
                # A worker not ready in time on a loaded machine, or one that exited during
                # the row (RuntimeError from its liveness check): the other tiers still run.
                progress(f"tier {rpm} rpm skipped: {exc}")
                continue
            progress(
                f"tier {rpm} rpm: utilization {result.utilization * 100:.1f} %, "
                f"429s {result.rate_limited}, max in flight {result.max_in_flight}, "
                f"worker CPU {result.worker_cores:.2f} cores, load {result.load_average:g}"
            )
            results.append(result)
    return results


def table(results: list[Result], host: dict[str, str | int]) -> str:
    header = [
        "rpm",
        "workers",
        "measured s",
        "accepted",
        "utilization %",
        "429s",
        "max/60s",
        "max/5s (share)",
        "max in flight",
        "worker CPU (cores)",
        "load avg",
        "failed",
    ]
    rows = [
        [
            str(r.rpm),
            str(r.workers),
            f"{r.measure_s:g}",
            str(r.accepted),
            f"{r.utilization * 100:.1f}" + ("" if r.window_covered else " (short)"),
            str(r.rate_limited),
            str(r.max_60s),
            f"{r.max_5s} ({-(-r.rpm * 5 // 60)})",
            str(r.max_in_flight),
            f"{r.worker_cores:.2f}",
            f"{r.load_average:g}",
            failed_cell(r),
        ]
        for r in results
    ]
    footer = (
        f"calls {LATENCY_MS / 1000:g} s +- {JITTER_MS / 1000:g} s, ceiling {CEILING}; "
        f"machine: nproc={host['nproc']} cpu={host['cpu']} python={host['python']} "
        f"date={host['date']}"
    )
    return "\n".join([*render(header, rows), footer])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers", description=__doc__)
    parser.add_argument(
        "--tiers", type=parse_tiers, default=TIERS, help="rpm x workers, e.g. 50x1,6000x2"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured period")
    parser.add_argument("--warmup", type=float, default=15.0, help="ignored start of each row")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    return bench_main(
        lambda: run(args.tiers, args.seconds, args.warmup),
        as_json=args.json,
        to_json=results_json,
        to_text=table,
    )


if __name__ == "__main__":
    sys.exit(main())
