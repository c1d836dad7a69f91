"""Jobs of growing size through one worker (issue 9): submit time, read latency, memory.

`python -m bench.job_sizes` starts one embedded Apache Kafka, an instant Claude simulator
(latency 0, no limit) and one worker (CLAUDE_REQUESTS_PER_MINUTE high enough never to
bind), then sends one job per size in `--sizes` (default 1000,10000; `--all` adds 100000),
one after the other, to the same worker, and measures for each:

- POST: seconds from sending the body to the 202 (every record acknowledged by the broker,
  then the job's announcement; see README "Submitting large jobs"). The body is NDJSON (a
  record a line, streamed: how large jobs are meant to be sent); `--body json` sends one
  JSON document instead (parsed whole by the worker, which then holds it in its heap);
- status p50 / p99: `GET /status` (default parameters: counters and the first results,
  at most 1000) polled every 100 ms while the job runs;
- page p50 / p99: `GET /results?offset=&limit=100` at evenly spread offsets of the
  finished job (50 calls);
- worker RSS (VmRSS) before the job's submit and after it completed.

The memory target: RSS after the largest job within 20 % of RSS after the one before it
(`growth`). Progress goes to stderr; stdout holds only the table (or JSON with `--json`).

`--submit-only` measures the POST alone (issue 9: "202 within a second or two whatever the
size"): the worker gets a budget of one call a minute, so nothing runs while it takes the
jobs, and each size (default 1000,10000,100000) is sent `--repeat` times (default 2) as
NDJSON and as one JSON document, in turns. Per submit: the POST's seconds as the client
sees them, and the worker's own split from its `job accepted` log line (reading and
validating the body; publishing it until the broker acknowledged every record and the
announcement).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.bare_loop import record_text
from bench.harness import (
    bench_main,
    namespace_env,
    progress,
    render,
    results_json,
    rss_bytes,
    start_broker,
    start_worker,
    stop_workers,
    wait_cluster_ready,
)
from bench.overhead import parse_counts, percentile
from simulator import SimulatorConfig
from simulator.testing import SimulatorHandle, run_simulator
from stream_app.running.testing import ServiceProcess, wait_until

PARTITIONS = 8
RPM = 1_000_000
CONCURRENCY = 32
DEFAULT_SIZES = (1_000, 10_000)
ALL_SIZES = (1_000, 10_000, 100_000)
PAGE_CALLS = 50
PAGE_LIMIT = 100
TARGET_RSS_GROWTH = 0.2


SUBMIT_SIZES = ALL_SIZES
SUBMIT_KINDS = ("ndjson", "json")
# One call a minute: the jobs wait, so the worker does nothing but take the submits.
SUBMIT_ONLY_RPM = 1


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    json: bool = False
    body: str = "ndjson"
    submit_only: bool = False
    repeat: int = 2


@dataclass
class JobFigures:
    records: int
    body_mib: float
    post_s: float
    status_p50_ms: float | None
    status_p99_ms: float | None
    status_calls: int
    page_p50_ms: float | None
    page_p99_ms: float | None
    rss_before_mib: float
    rss_after_mib: float
    completed: bool
    failed_count: int
    run_s: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.job_sizes", description=__doc__)
    parser.add_argument(
        "--sizes", type=parse_counts, default=None, help="job sizes, e.g. 1000,10000 (default)"
    )
    parser.add_argument("--all", action="store_true", help="sizes 1000,10000,100000")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--body", choices=("ndjson", "json"), default="ndjson", help="how jobs are sent"
    )
    parser.add_argument(
        "--submit-only",
        action="store_true",
        help="time the POST alone (no job runs), NDJSON and JSON, sizes 1000,10000,100000",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="submits per size and body (--submit-only; 2)"
    )
    args = parser.parse_args(argv)
    default = SUBMIT_SIZES if args.submit_only else DEFAULT_SIZES
    sizes = args.sizes or (ALL_SIZES if args.all else default)
    return Options(
        sizes=sizes,
        json=args.json,
        body=args.body,
        submit_only=args.submit_only,
        repeat=args.repeat,
    )


def body_of(records: int, kind: str) -> tuple[bytes, str]:
    """The job's body and its content type."""
    if kind == "json":
        body = orjson.dumps({"records": [{"text": record_text(i)} for i in range(records)]})
        return body, "application/json"
    lines = b"".join(orjson.dumps({"text": record_text(i)}) + b"\n" for i in range(records))
    return lines, "application/x-ndjson"


class StatusPoller:
    """Polls a job's status every 100 ms on a thread; keeps each call's latency (ms) and
    the last body."""

    def __init__(self, worker: ServiceProcess, job_id: str) -> None:
        self.latencies_ms: list[float] = []
        self.last: dict[str, object] = {}
        self._url = f"{worker.base_url}/api/v1/batch/{job_id}/status"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="status-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    reply = http.get(self._url)
                except httpx.HTTPError:
                    continue
                self.latencies_ms.append((time.perf_counter() - began) * 1000)
                if reply.status_code == 200:
                    body = reply.json()
                    body.pop("results", None)
                    self.last = body
                self._stop.wait(0.1)

    def finished(self) -> bool:
        return self.last.get("status") == "completed"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35.0)


def page_latencies(worker: ServiceProcess, job_id: str, records: int) -> list[float]:
    """ms of PAGE_CALLS results pages at offsets spread evenly over the job."""
    times = []
    step = max(1, records // PAGE_CALLS)
    with worker.client(timeout=30.0) as http:
        for offset in range(0, records, step)[:PAGE_CALLS]:
            began = time.perf_counter()
            reply = http.get(
                f"/api/v1/batch/{job_id}/results", params={"offset": offset, "limit": PAGE_LIMIT}
            )
            reply.raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return sorted(times)


def timed_submit(
    worker: ServiceProcess, body: bytes, content_type: str
) -> tuple[float, httpx.Response]:
    """POST `body` as one job: (seconds to the answer, the 202). Raises RuntimeError on
    any other answer."""
    began = time.monotonic()
    reply = httpx.post(
        f"{worker.base_url}/api/v1/batch",
        content=body,
        headers={"content-type": content_type},
        timeout=600.0,
    )
    seconds = time.monotonic() - began
    if reply.status_code != 202:
        raise RuntimeError(f"submit failed: {reply.status_code} {reply.text[:500]}")
    return seconds, reply


def run_job(worker: ServiceProcess, records: int, kind: str = "ndjson") -> JobFigures:
    pid = worker.process.pid
    body, content_type = body_of(records, kind)
    rss_before = rss_bytes(pid) / 2**20
    progress(f"job of {records} records ({len(body) / 2**20:.1f} MiB body): submitting")
    began = time.monotonic()  # the job's run time counts from the submit
    post_s, reply = timed_submit(worker, body, content_type)
    del body
    job_id = reply.json()["job_id"]
    progress(f"job of {records}: 202 after {post_s:.2f} s; waiting for completion")
    poller = StatusPoller(worker, job_id)

    def finished() -> bool:
        worker.ensure_alive()
        return poller.finished()

    try:
        wait_until(
            finished,
            timeout=records / 5 + 120,
            interval=0.5,
            what=f"job {job_id}",
        )
    except TimeoutError:
        progress(f"job {job_id} not completed: {poller.last.get('status')}")
    finally:
        poller.stop()
    run_s = time.monotonic() - began
    pages = page_latencies(worker, job_id, records)
    statuses = sorted(poller.latencies_ms)
    figures = JobFigures(
        records=records,
        body_mib=round(len(reply.request.content) / 2**20, 1),
        post_s=round(post_s, 2),
        status_p50_ms=_rounded(percentile(statuses, 0.5)),
        status_p99_ms=_rounded(percentile(statuses, 0.99)),
        status_calls=len(statuses),
        page_p50_ms=_rounded(percentile(pages, 0.5)),
        page_p99_ms=_rounded(percentile(pages, 0.99)),
        rss_before_mib=round(rss_before, 1),
        rss_after_mib=round(rss_bytes(pid) / 2**20, 1),
        completed=poller.finished(),
        failed_count=int(str(poller.last.get("failed_count") or 0)),
        run_s=round(run_s, 1),
    )
    progress(f"job of {records}: {figures}")
    return figures


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def one_worker(
    stack: ExitStack,
    name: str,
    broker: str,
    workdir: Path,
    *,
    rpm: int,
    largest: int,
    **extra: str,
) -> tuple[ServiceProcess, SimulatorHandle]:
    """A ready worker on `broker` and the instant simulator it calls, both stopped with
    `stack`: KAFKA_PARTITIONS partitions, a budget of `rpm`, room for a body of `largest`
    records (the default allows 10,000 a request), and `extra` settings."""
    simulator = stack.enter_context(run_simulator(SimulatorConfig(latency_ms=0.0)))
    env = {
        **namespace_env(name, broker, simulator),
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "CLAUDE_REQUESTS_PER_MINUTE": str(rpm),
        "BATCH_MAX_RECORDS_PER_REQUEST": str(largest),
        **extra,
    }
    worker = start_worker(env, workdir / "worker")
    stack.callback(stop_workers, [worker])
    wait_cluster_ready([worker])
    return worker, simulator


def run_sizes(opts: Options, broker: str, workdir: Path) -> list[JobFigures]:
    """One worker on `broker`, one job per size, in order."""
    with ExitStack() as stack:
        worker, simulator = one_worker(
            stack,
            "sizes",
            broker,
            workdir,
            rpm=RPM,
            largest=max(opts.sizes),
            BATCH_MAX_CONCURRENT_LLM_CALLS=str(CONCURRENCY),
        )
        figures = []
        for size in opts.sizes:
            simulator.reset()  # its request log would grow with every job
            figures.append(run_job(worker, size, opts.body))
        return figures


def run(opts: Options) -> list[JobFigures]:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sizes-")))
        broker = start_broker(stack, workdir)
        return run_sizes(opts, broker, workdir)


@dataclass
class SubmitFigures:
    records: int
    body: str
    body_mib: float
    # The POST as the client sees it, one value per submit, in order (the first is cold).
    post_s: list[float]
    # The worker's split of each submit (its `job accepted` log line).
    read_s: list[float]
    publish_s: list[float]


_ACCEPTED = re.compile(r"job accepted.*?read_seconds=([0-9.]+).*?publish_seconds=([0-9.]+)")


def accepted_splits(worker: ServiceProcess) -> list[tuple[float, float]]:
    """(read_seconds, publish_seconds) of every `job accepted` line of the worker's log."""
    return [(float(m[1]), float(m[2])) for m in _ACCEPTED.finditer(worker.logs())]


def nth_split(worker: ServiceProcess, n: int) -> tuple[float, float]:
    """The split of the worker's n-th accepted job (from 1), once its line is logged."""

    def logged() -> list[tuple[float, float]] | None:
        splits = accepted_splits(worker)
        return splits if len(splits) >= n else None

    return wait_until(logged, timeout=10.0, what=f"job accepted line {n}")[n - 1]


def submit_only(opts: Options) -> list[SubmitFigures]:
    """POST times on an idle worker (a budget of SUBMIT_ONLY_RPM), no job run."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-submit-")))
        broker = start_broker(stack, workdir)
        return run_submits(opts, broker, workdir)


def run_submits(opts: Options, broker: str, workdir: Path) -> list[SubmitFigures]:
    """One idle worker on `broker`; each size sent `opts.repeat` times per body kind."""
    with ExitStack() as stack:
        worker, _ = one_worker(
            stack, "submit", broker, workdir, rpm=SUBMIT_ONLY_RPM, largest=max(opts.sizes)
        )
        figures: list[SubmitFigures] = []
        done = 0
        for size in opts.sizes:
            for kind in SUBMIT_KINDS:
                body, content_type = body_of(size, kind)
                entry = SubmitFigures(size, kind, round(len(body) / 2**20, 1), [], [], [])
                for _ in range(opts.repeat):
                    post_s, reply = timed_submit(worker, body, content_type)
                    entry.post_s.append(round(post_s, 2))
                    done += 1
                    read, publish = nth_split(worker, done)
                    entry.read_s.append(read)
                    entry.publish_s.append(publish)
                    progress(
                        f"{size} records, {kind}: 202 after {entry.post_s[-1]:.2f} s "
                        f"(read {read:.2f} s, publish {publish:.2f} s)"
                    )
                figures.append(entry)
        return figures


SUBMIT_HEADER = ["records", "body", "body MiB", "POST s", "read s", "publish s"]


def submit_rows(figures: list[SubmitFigures]) -> list[list[str]]:
    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    return [
        [
            f"{f.records:,}",
            f.body,
            f"{f.body_mib:.1f}",
            each(f.post_s),
            each(f.read_s),
            each(f.publish_s),
        ]
        for f in figures
    ]


def _submit_text(figures: list[SubmitFigures], host: dict[str, str | int]) -> str:
    lines = render(SUBMIT_HEADER, submit_rows(figures))
    lines.append("one value per submit, in order (the first of each row after a new size is cold)")
    lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in host.items()))
    return "\n".join(lines)


def growth(figures: list[JobFigures]) -> float | None:
    """RSS after the last job against after the one before it (0.1 = 10 %)."""
    if len(figures) < 2:
        return None
    return figures[-1].rss_after_mib / figures[-2].rss_after_mib - 1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


HEADER = [
    "records",
    "body MiB",
    "POST s",
    "status p50/p99 ms",
    "page p50/p99 ms",
    "RSS before/after MiB",
    "job s",
    "failed",
]


def rows(figures: list[JobFigures]) -> list[list[str]]:
    out = []
    for f in figures:
        done = "" if f.completed else " (incomplete)"
        out.append(
            [
                f"{f.records:,}",
                f"{f.body_mib:.1f}",
                f"{f.post_s:.2f}",
                f"{_ms(f.status_p50_ms)} / {_ms(f.status_p99_ms)} (n={f.status_calls})",
                f"{_ms(f.page_p50_ms)} / {_ms(f.page_p99_ms)}",
                f"{f.rss_before_mib:.0f} / {f.rss_after_mib:.0f}",
                f"{f.run_s:.0f}{done}",
                str(f.failed_count),
            ]
        )
    return out


def summary_rows(figures: list[JobFigures]) -> list[list[str]]:
    """[figure, value, target] rows, for `python -m bench`'s one table."""
    out = []
    for f in figures:
        n = f"{f.records:,} records"
        done = "" if f.completed else " (incomplete)"
        out += [
            [f"{n}: POST (202) s", f"{f.post_s:.2f}{done}", ""],
            [
                f"{n}: status / page p50 / p99 ms",
                f"{_ms(f.status_p50_ms)} / {_ms(f.status_p99_ms)}, "
                f"{_ms(f.page_p50_ms)} / {_ms(f.page_p99_ms)}",
                "",
            ],
            [
                f"{n}: worker RSS MiB before / after",
                f"{f.rss_before_mib:.0f} / {f.rss_after_mib:.0f}",
                "",
            ],
        ]
    g = growth(figures)
    if g is not None:
        met = "met" if g <= TARGET_RSS_GROWTH else "NOT met"
        out.append(
            [
                f"RSS after {figures[-1].records:,} vs after {figures[-2].records:,}",
                f"{g:+.0%}",
                f"<= {TARGET_RSS_GROWTH:.0%}: {met}",
            ]
        )
    return out


def summary(figures: list[JobFigures]) -> str:
    g = growth(figures)
    if g is None:
        return "RSS growth: one job only"
    met = "met" if g <= TARGET_RSS_GROWTH else "NOT met"
    last, before = figures[-1].records, figures[-2].records
    return (
        f"RSS after {last:,} against after {before:,}: {g:+.0%} "
        f"(target <= {TARGET_RSS_GROWTH:.0%}: {met})"
    )


def _text(figures: list[JobFigures], host: dict[str, str | int]) -> str:
    lines = render(HEADER, rows(figures))
    lines.append(summary(figures))
    lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in host.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.submit_only:
        return bench_main(
            lambda: submit_only(opts),
            as_json=opts.json,
            to_json=results_json,
            to_text=_submit_text,
        )
    return bench_main(lambda: run(opts), as_json=opts.json, to_json=results_json, to_text=_text)


if __name__ == "__main__":
    sys.exit(main())
