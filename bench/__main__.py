"""`python -m bench` (`make bench`): the benchmarks of bench/ in one run, one table.

By default: bench.overhead with its defaults (3,000 records at 32 calls in flight, 1 and
2 workers, a 10,000-record memory job), a short bench.utilization (1 worker, 20 s
measured after 5 s), bench.job_sizes (jobs of 1,000 and 10,000 records: submit time,
status and page latency, worker memory) and bench.table_memory (the table stores' memory
after 10,000 and 100,000 records' writes, Faust's default options against the pipeline's).
`--all` adds bench.fairness (0 and 20,000 records ahead) and bench.outage with their
defaults (about 10 more minutes) and a 100,000-record job to bench.job_sizes (40 minutes
or more on 2 cores). Each benchmark keeps its own command and flags for longer runs
(bench/README.md). Progress goes to stderr; stdout holds only the table.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from bench import fairness, job_sizes, outage, overhead, table_memory, utilization
from bench.harness import elapsed, machine, progress, render, sigterm_as_interrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--all", action="store_true", help="also bench.fairness, bench.outage")
    parser.add_argument(
        "--records", type=int, default=3000, help="records of the overhead job (3000)"
    )
    parser.add_argument(
        "--sizes",
        type=overhead.parse_counts,
        default=(10_000,),
        help="memory jobs after the overhead job (10000; the README: 10000,100000)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    table: list[list[str]] = []
    try:
        report = overhead.run(overhead.Options(records=args.records, sizes=args.sizes))
        table += [["overhead", *row] for row in overhead.rows(report)]
        util = utilization.run(
            utilization.Options(workers=(1,), rpm=300, seconds=20.0, warmup=5.0, json=False)
        )
        table += [["utilization", *row] for row in utilization.rows(util)]
        sizes = job_sizes.run(
            job_sizes.Options(sizes=job_sizes.ALL_SIZES if args.all else job_sizes.DEFAULT_SIZES)
        )
        table += [["job sizes", *row] for row in job_sizes.summary_rows(sizes)]
        tables = table_memory.run(table_memory.SIZES)
        table += [["table memory", *row] for row in table_memory.rows(tables)]
        if args.all:
            fair = fairness.run(fairness.parse_args(["--depths", "0,20000"]))
            table += [["fairness", *row] for row in fairness.rows(fair)]
            table += [["outage", *row] for row in outage.rows(outage.run(outage.parse_args([])))]
    except KeyboardInterrupt:
        progress("interrupted; children stopped")
        return 130
    lines = render(["benchmark", "figure", "value", "target"], table)
    lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    print("\n".join(lines))
    progress(f"total {elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
