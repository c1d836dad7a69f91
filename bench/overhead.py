"""What the service itself costs when the provider is instant (issue 13).

`python -m bench.overhead` starts one embedded Apache Kafka and one Claude simulator with
no latency and no limit, then measures, in one run:

1. overhead: `--records` records through the whole service (HTTP submit to one worker,
   batch.records, the process agent, batch.results, the aggregate agent and its tables,
   status polled until `completed`) against a bare asyncio loop of the same SDK calls
   (bench.bare_loop) at the same concurrency (`--concurrency`, 32 calls in flight), for
   each worker count in `--workers`. The bare loop runs just before each service run, on
   the same simulator, so the ratio holds on a noisy machine;
2. the Kafka path: raw aiokafka produce (acks=all) then consume of as many record-sized
   messages on the same broker, against the service's records/s;
3. result visibility: for each record, the time from the simulator's answer (`t_done` in
   its request log) to the result's arrival on the job's event stream
   (/api/v1/batch/{id}/events), p50 and p99; records answered before the stream was open
   are left out;
4. memory: the worker's resident set (VmRSS) when ready, after the overhead job, and after
   each job of `--sizes` records, sent one after the other to the 1-worker service;
5. the time of a status call on the finished overhead job (default parameters: with its
   results, and with `limit=0`: counters only).

Progress goes to stderr; stdout holds only the table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.bare_loop import record_text
from bench.harness import (
    bench_main,
    cpu_seconds,
    job_status,
    namespace_env,
    progress,
    render,
    rss_bytes,
    start_broker_process,
    start_simulator_process,
    start_worker,
    stop_workers,
    wait_cluster_ready,
)
from simulator.testing import SimulatorHandle
from stream_app.kafka.topics import ensure_topics
from stream_app.running.testing import ROOT, ServiceProcess, wait_until

PARTITIONS = 8
# High enough that the service's own pacing never binds (the simulator enforces none).
RPM = 1_000_000
# Targets of issue 13.
TARGET_RATIO = 0.8
TARGET_P99_S = 1.0
TARGET_RSS_GROWTH = 0.2
_RECORD_IN_LOG = re.compile(r"^Record (\d+):")


@dataclass(frozen=True)
class Options:
    records: int = 3000
    workers: tuple[int, ...] = (1, 2)
    sizes: tuple[int, ...] = (10_000,)
    concurrency: int = 32
    kafka: bool = True
    json: bool = False


@dataclass
class Overhead:
    workers: int
    records: int
    bare_records_per_s: float
    service_records_per_s: float
    ratio: float
    # CPU milliseconds per record, user and system, of each process that takes part, in
    # the bare loop's run and in the service's: "worker" (the bare loop's process during
    # its calls; the workers, summed, from the submit to `completed`), "broker",
    # "simulator", and "client" (this process: the submit, the status polls and the event
    # stream). The worker ratio is what the service would reach if each had a core to
    # itself; with every part known, the machine ratio bounds the records/s ratio once every
    # core is busy. Both hold on a loaded machine, where records/s move with whatever runs.
    bare_cpu_ms: dict[str, float]
    service_cpu_ms: dict[str, float]

    completed: bool
    failed_count: int
    visibility_p50_s: float | None
    visibility_p99_s: float | None
    visibility_samples: int
    # Median of 5 status calls on the finished job: default parameters, and limit=0.
    status_ms: float
    status_counters_ms: float


@dataclass
class KafkaPath:
    records: int
    value_bytes: int
    produce_records_per_s: float
    consume_records_per_s: float
    # Records / (produce seconds + consume seconds): the same records through one hop.
    records_per_s: float


@dataclass
class Memory:
    # (label, resident set in MiB), in the order measured.
    points: list[tuple[str, float]] = field(default_factory=list)
    # Sizes whose submit failed (e.g. not acknowledged within KAFKA_PUBLISH_TIMEOUT_SECONDS).
    failed: list[int] = field(default_factory=list)

    def growth(self) -> float | None:
        """Growth from the job before the last one to the last one (0.1 = 10 %)."""
        after = [mib for label, mib in self.points if label.startswith("after ")]
        return after[-1] / after[-2] - 1 if len(after) >= 2 else None


@dataclass
class Report:
    overhead: list[Overhead]
    kafka: KafkaPath | None
    memory: Memory


def parse_counts(raw: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in raw.split(",") if part.strip())
    if min(counts, default=1) < 1:
        raise argparse.ArgumentTypeError("expected positive counts like 1,2")
    return counts


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--records", type=int, default=3000, help="records of the overhead job")
    parser.add_argument("--workers", type=parse_counts, default=(1, 2), help="e.g. 1,2")
    parser.add_argument(
        "--sizes",
        type=parse_counts,
        default=(10_000,),
        help="jobs sent after the overhead job to measure memory, e.g. 10000,100000 (empty: none)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--no-kafka", action="store_true", help="skip the raw aiokafka row")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    return Options(
        args.records, args.workers, args.sizes, args.concurrency, not args.no_kafka, args.json
    )


def run_bare_loop(
    simulator: SimulatorHandle, records: int, concurrency: int
) -> tuple[float, float]:
    """(records/s, CPU ms per record) of bench.bare_loop, in a process of its own, against
    `simulator`."""
    command = [
        sys.executable,
        "-m",
        "bench.bare_loop",
        f"--base-url={simulator.base_url}",
        f"--records={records}",
        f"--concurrency={concurrency}",
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bare loop failed: {done.stderr[-2000:]}")
    figures = json.loads(done.stdout)
    if figures["ok"] != records:
        raise RuntimeError(f"bare loop: {figures['ok']} of {records} calls answered")
    return records / figures["seconds"], figures["cpu_seconds"] * 1000 / records


def submit(worker: ServiceProcess, records: int) -> str:
    body = orjson.dumps({"records": [{"text": record_text(i)} for i in range(records)]})
    reply = httpx.post(
        f"{worker.base_url}/api/v1/batch",
        content=body,
        headers={"content-type": "application/json"},
        timeout=300.0,
    )
    if reply.status_code != 202:
        raise RuntimeError(f"submit failed: {reply.status_code} {reply.text[:500]}")
    job_id: str = reply.json()["job_id"]
    return job_id


def wait_completed(worker: ServiceProcess, job_id: str, timeout: float) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def completed() -> bool:
        worker.ensure_alive()
        body = job_status(worker, job_id)
        if body is not None:
            last.update(body)
        return last.get("status") == "completed"

    try:
        wait_until(completed, timeout=timeout, interval=0.1, what=f"job {job_id}")
    except TimeoutError:
        progress(f"job {job_id} not completed after {timeout:.0f} s: {last.get('status')}")
    return last


class EventWatch:
    """Reads a job's event stream on a thread: when each result arrived (time.time())."""

    def __init__(self, worker: ServiceProcess, job_id: str) -> None:
        self.seen: dict[int, float] = {}
        self.connected_at: float | None = None
        self._url = f"{worker.base_url}/api/v1/batch/{job_id}/events"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="event-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self._url, timeout=httpx.Timeout(10.0, read=30.0)) as reply:
                self.connected_at = time.time()
                event = ""
                for line in reply.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "result":
                        now = time.time()
                        self.seen.setdefault(orjson.loads(line[5:])["index"], now)
                    elif line.startswith("data:") and event == "end":
                        return
        except httpx.HTTPError as exc:
            progress(f"event stream ended: {type(exc).__name__}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35.0)


def visibility(stats: dict[str, Any], watch: EventWatch) -> list[float]:
    """Seconds from each record's answer to its result on the event stream."""
    answered: dict[int, float] = {}
    for request in stats["requests"]:
        match = _RECORD_IN_LOG.match(request["text"])
        if request["status"] == 200 and match:
            answered[int(match[1])] = request["t_done"]
    since = watch.connected_at or float("inf")
    return sorted(
        watch.seen[index] - t_done
        for index, t_done in answered.items()
        if t_done >= since and index in watch.seen
    )


def percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def status_ms(worker: ServiceProcess, job_id: str, params: dict[str, str]) -> float:
    times = []
    with worker.client(timeout=60.0) as http:
        for _ in range(5):
            began = time.perf_counter()
            http.get(f"/api/v1/batch/{job_id}/status", params=params).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def run_overhead(
    count: int,
    opts: Options,
    broker: str,
    simulator: SimulatorHandle,
    workdir: Path,
    memory: Memory | None = None,
    *,
    broker_pid: int | None = None,
    simulator_pid: int | None = None,
) -> Overhead:
    """One service run of `count` workers against a bare loop just before it. With
    `memory`, also the 1-worker memory points (`opts.sizes` jobs after the overhead job).
    The broker's and the simulator's CPU time is measured when their process ids are given
    (a simulator in this process counts as the client's)."""
    others = {"broker": broker_pid, "simulator": simulator_pid}

    def others_cpu() -> dict[str, float]:
        """CPU seconds so far of the processes other than the workers."""
        now = {part: cpu_seconds(pid) for part, pid in others.items() if pid is not None}
        return {**now, "client": time.process_time()}

    def per_record(began: dict[str, float]) -> dict[str, float]:
        now = others_cpu()
        return {part: round((now[part] - began[part]) * 1000 / opts.records, 3) for part in now}

    simulator.reset()
    progress(f"bare loop: {opts.records} calls, {opts.concurrency} in flight")
    others_began = others_cpu()
    bare, bare_cpu = run_bare_loop(simulator, opts.records, opts.concurrency)
    bare_cpu_ms = {"worker": round(bare_cpu, 3), **per_record(others_began)}
    progress(f"bare loop: {bare:.0f} records/s")
    simulator.reset()
    env = {
        **namespace_env("overhead", broker, simulator),
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "CLAUDE_REQUESTS_PER_MINUTE": str(RPM),
        "BATCH_MAX_CONCURRENT_LLM_CALLS": str(opts.concurrency),
    }
    with ExitStack() as stack:
        workers: list[ServiceProcess] = []
        stack.callback(stop_workers, workers)
        for i in range(count):
            workers.append(start_worker(env, workdir / f"worker{i}"))
        wait_cluster_ready(workers)
        if memory is not None:
            memory.points.append(("ready", rss_bytes(workers[0].process.pid) / 2**20))
        progress(f"{count} worker(s) ready; submitting {opts.records} records")
        pids = [worker.process.pid for worker in workers]
        cpu_began, others_began = sum(map(cpu_seconds, pids)), others_cpu()
        began = time.monotonic()
        job_id = submit(workers[0], opts.records)
        watch = EventWatch(workers[0], job_id)
        final = wait_completed(workers[0], job_id, timeout=opts.records / 10 + 60)
        seconds = time.monotonic() - began
        service_cpu = (sum(map(cpu_seconds, pids)) - cpu_began) * 1000 / opts.records
        service_cpu_ms = {"worker": round(service_cpu, 3), **per_record(others_began)}
        watch.stop()
        service = opts.records / seconds
        progress(f"{count} worker(s): {service:.0f} records/s ({seconds:.1f} s)")
        delays = visibility(simulator.stats(), watch)
        full = status_ms(workers[0], job_id, {})
        counters = status_ms(workers[0], job_id, {"limit": "0"})
        if memory is not None:
            pid = workers[0].process.pid
            memory.points.append((f"after {opts.records}", rss_bytes(pid) / 2**20))
            for size in opts.sizes:
                simulator.reset()  # the request log would grow with every job
                progress(f"memory: job of {size} records")
                try:
                    sized = submit(workers[0], size)
                except RuntimeError as exc:  # a finding, not a reason to lose the rest
                    progress(str(exc))
                    memory.failed.append(size)
                    continue
                wait_completed(workers[0], sized, timeout=size / 10 + 60)
                memory.points.append((f"after {size}", rss_bytes(pid) / 2**20))
    return Overhead(
        workers=count,
        records=opts.records,
        bare_records_per_s=round(bare, 1),
        service_records_per_s=round(service, 1),
        ratio=round(service / bare, 3),
        bare_cpu_ms=bare_cpu_ms,
        service_cpu_ms=service_cpu_ms,
        completed=final.get("status") == "completed",
        failed_count=int(final.get("failed_count") or 0),
        visibility_p50_s=percentile(delays, 0.5),
        visibility_p99_s=percentile(delays, 0.99),
        visibility_samples=len(delays),
        status_ms=round(full, 1),
        status_counters_ms=round(counters, 1),
    )


async def raw_kafka(broker: str, records: int) -> KafkaPath:
    """Produce `records` record-event-sized messages (acks=all, as the service produces)
    to a fresh topic, then consume them all."""
    topic = f"overhead-raw-{time.monotonic_ns()}"
    # Waits for the partitions' leaders, as the service does at its first start.
    await ensure_topics(broker, {topic: PARTITIONS})
    values = [
        orjson.dumps({"job_id": "0" * 32, "index": i, "record": {"text": record_text(i)}})
        for i in range(records)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        began = time.monotonic()
        for i, value in enumerate(values):
            await producer.send(topic, value, key=f"{'0' * 32}#{i}".encode())
        await producer.flush()
        produce = time.monotonic() - began
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        began = time.monotonic()
        got = 0
        while got < records:
            batches = await consumer.getmany(timeout_ms=1000)
            got += sum(len(batch) for batch in batches.values())
        consume = time.monotonic() - began
    finally:
        await consumer.stop()
    return KafkaPath(
        records=records,
        value_bytes=len(values[0]),
        produce_records_per_s=round(records / produce, 1),
        consume_records_per_s=round(records / consume, 1),
        records_per_s=round(records / (produce + consume), 1),
    )


def run(opts: Options) -> Report:
    overhead: list[Overhead] = []
    memory = Memory()
    kafka: KafkaPath | None = None
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-overhead-")))
        broker, broker_pid = start_broker_process(stack, workdir)
        simulator, simulator_pid = start_simulator_process(stack)
        if opts.kafka:
            kafka = asyncio.run(raw_kafka(broker, opts.records))
            progress(f"raw aiokafka: {kafka.records_per_s:.0f} records/s produce+consume")
        for n, count in enumerate(opts.workers):
            measured = memory if count == 1 and not memory.points else None
            overhead.append(
                run_overhead(
                    count,
                    opts,
                    broker,
                    simulator,
                    workdir / f"s{n}-{count}w",
                    measured,
                    broker_pid=broker_pid,
                    simulator_pid=simulator_pid,
                )
            )
    return Report(overhead, kafka, memory)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


CPU_PARTS = ("worker", "broker", "simulator", "client")


def machine_cpu_ms(parts: dict[str, float]) -> float | None:
    """CPU ms per record of every process that takes part; None when one was not measured."""
    if not all(part in parts for part in CPU_PARTS):
        return None
    return sum(parts[part] for part in CPU_PARTS)


def _cpu(service_ms: float | None, bare_ms: float | None, ratio: bool = True) -> str:
    if service_ms is None or bare_ms is None:
        return "-"
    text = f"{service_ms:.2f} / {bare_ms:.2f}"
    return text + f" (bare / service: {bare_ms / service_ms:.2f})" if ratio else text


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def rows(report: Report) -> list[list[str]]:
    """[figure, value, target] rows of the report."""
    out: list[list[str]] = []
    for o in report.overhead:
        w = f"{o.workers}w"
        done = "" if o.completed else " (incomplete)"
        out += [
            [f"{w}: service records/s", f"{o.service_records_per_s:.0f}{done}", ""],
            [f"{w}: bare SDK loop records/s", f"{o.bare_records_per_s:.0f}", ""],
            [
                f"{w}: service / bare loop",
                f"{o.ratio:.2f}",
                f">= {TARGET_RATIO}: {_met(o.ratio >= TARGET_RATIO)}" if o.workers == 1 else "",
            ],
            [
                f"{w}: result visibility p50 / p99",
                f"{_seconds(o.visibility_p50_s)} / {_seconds(o.visibility_p99_s)}"
                f" (n={o.visibility_samples})",
                f"p99 < {TARGET_P99_S:g} s: "
                + _met(o.visibility_p99_s is not None and o.visibility_p99_s < TARGET_P99_S),
            ],
            [
                f"{w}: status call, {o.records} results / limit=0",
                f"{o.status_ms:.0f} ms / {o.status_counters_ms:.0f} ms",
                "",
            ],
            [
                f"{w}: worker CPU ms per record, service / bare loop",
                _cpu(o.service_cpu_ms["worker"], o.bare_cpu_ms["worker"]),
                "",
            ],
            *(
                [
                    f"{w}: {part} CPU ms per record, service run / bare loop run",
                    _cpu(o.service_cpu_ms.get(part), o.bare_cpu_ms.get(part), ratio=False),
                    "",
                ]
                for part in CPU_PARTS[1:]
            ),
            [
                f"{w}: machine CPU ms per record, service / bare loop",
                _cpu(machine_cpu_ms(o.service_cpu_ms), machine_cpu_ms(o.bare_cpu_ms)),
                "",
            ],
            [f"{w}: failed records", str(o.failed_count), "0"],
        ]
    if report.kafka is not None:
        k = report.kafka
        one = next((o for o in report.overhead if o.workers == 1), None)
        share = ""
        if one is not None:
            share = f" (service 1w: {one.service_records_per_s / k.records_per_s:.2f} of it)"
        out += [
            [
                f"raw aiokafka produce / consume records/s ({k.value_bytes} B values)",
                f"{k.produce_records_per_s:.0f} / {k.consume_records_per_s:.0f}",
                "",
            ],
            ["raw aiokafka produce+consume records/s", f"{k.records_per_s:.0f}{share}", ""],
        ]
    if report.memory.points:
        points = ", ".join(f"{label}: {mib:.0f}" for label, mib in report.memory.points)
        growth = report.memory.growth()
        target = ""
        if growth is not None:
            met = _met(growth <= TARGET_RSS_GROWTH)
            target = f"<= {TARGET_RSS_GROWTH:.0%} growth: {met} ({growth:+.0%})"
        if report.memory.failed:
            points += f"; submit failed: {', '.join(map(str, report.memory.failed))}"
        out.append(["worker RSS MiB (1w)", points, target])
    return out


HEADER = ["figure", "value", "target"]


def _text(report: Report, host: dict[str, str | int]) -> str:
    lines = render(HEADER, rows(report))
    lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in host.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    return bench_main(
        lambda: run(opts),
        as_json=opts.json,
        to_json=lambda report, host: {**asdict(report), "machine": host},
        to_text=_text,
    )


if __name__ == "__main__":
    sys.exit(main())
