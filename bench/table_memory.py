"""The memory the worker's table stores hold, by job size (issue 9), in seconds.

`python -m bench.table_memory` opens, in a child process each, the RocksDB partition
stores a worker with 8 partitions opens (3 tables x 8 partitions), once with Faust's
default options and once with the pipeline's (stream_app.kafka.pipeline.ROCKSDB_OPTIONS), and
writes what a job of `--sizes` records writes to them (per record: a ~1 KB result, a ~1 KB
processed outcome, and a ~0.7 KB job status on the job's one partition), reporting the
process's VmRSS after each size. A full job through the service costs 40 minutes to hours
for 100,000 records on 2 cores (bench.job_sizes --all); this isolates the part of the
worker's memory that grew with the job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import render

SIZES = (10_000, 100_000)
PARTITIONS = 8
TARGET_GROWTH = 0.2


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure(kind: str, sizes: Sequence[int]) -> dict[str, Any]:
    """In this process: open the stores with `kind` options, write, return RSS points."""
    from faust.stores.rocksdb import RocksDBOptions

    from stream_app.kafka.faust_app import ROCKSDB_OPTIONS

    extra: dict[str, Any] = dict(ROCKSDB_OPTIONS) if kind == "pipeline" else {}
    options = RocksDBOptions(use_rocksdict=True, **extra)
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        dbs = [
            options.open(Path(tmp) / f"t{table}-p{p}")
            for table in range(3)
            for p in range(PARTITIONS)
        ]
        result = os.urandom(500).hex().encode()
        status = os.urandom(350).hex().encode()
        points = {"open": _rss_mib()}
        written = 0
        for size in sorted(sizes):
            while written < size:
                p = written % PARTITIONS
                key = f"job#{written}".encode()
                dbs[p].put(key, result)  # record-results
                dbs[PARTITIONS + p].put(key, result)  # processed-records
                dbs[2 * PARTITIONS].put(b"job", status)  # job-status: one key
                written += 1
            points[f"after {size}"] = _rss_mib()
        return {"kind": kind, "points": points}


def run(sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Both kinds, each in a child process of its own (RSS is per process)."""
    out = []
    for kind in ("faust-default", "pipeline"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.table_memory", "--child", kind]
            + ["--sizes", ",".join(map(str, sizes))],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        out.append(json.loads(done.stdout))
    return out


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """[figure, value, target] rows."""
    out = []
    for r in results:
        points = r["points"]
        after = [v for k, v in points.items() if k.startswith("after")]
        growth = after[-1] / after[-2] - 1 if len(after) >= 2 else None
        value = ", ".join(f"{k}: {v:.0f}" for k, v in points.items())
        target = ""
        if growth is not None:
            met = "met" if growth <= TARGET_GROWTH else "NOT met"
            target = f"<= {TARGET_GROWTH:.0%} growth: {met} ({growth:+.0%})"
        out.append([f"table stores RSS MiB, {r['kind']} options", value, target])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table_memory", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="10000,100000")
    parser.add_argument("--child", choices=("faust-default", "pipeline"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.child:
        print(json.dumps(measure(args.child, sizes)))
        return 0
    results = run(sizes)
    print("\n".join(render(["figure", "value", "target"], rows(results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
