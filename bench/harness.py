"""What every benchmark does around its measurement: a broker, workers in a namespace of
their own, waiting for them, stopping them, and the machine line of the report.

The service is started as `make run` starts it (stream_app.running.testing.start_service); the
benchmarks only differ in the settings and the job they send.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx

from simulator.testing import SimulatorHandle
from stream_app.running.embedded import free_port, start_simulator
from stream_app.running.kafka_local import KAFKA_VERSION, LocalKafka
from stream_app.running.testing import ServiceProcess, start_service, wait_until

READY_TIMEOUT_S = 120.0
# A worker can report ready just before the next worker's join revokes its partitions;
# 2 s of "all ready" spans several checks, so a rebalance still under way is not mistaken
# for a settled cluster.
SETTLE_S = 2.0
STOP_TIMEOUT_S = 20.0

_started = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, with seconds since the benchmark started (stdout is the table)."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.monotonic() - _started


def start_broker(stack: ExitStack, workdir: Path) -> str:
    """An Apache Kafka broker of its own under `workdir`, stopped with `stack`; its address."""
    return start_broker_process(stack, workdir)[0]


def start_broker_process(stack: ExitStack, workdir: Path) -> tuple[str, int]:
    """As start_broker, with the broker's process id (to read its CPU time)."""
    port = free_port()
    broker = LocalKafka(workdir / "kafka").start(port)
    stack.callback(broker.stop)
    progress(f"Apache Kafka {KAFKA_VERSION} on 127.0.0.1:{port}")
    return f"127.0.0.1:{port}", broker.process.pid


def start_simulator_process(stack: ExitStack) -> tuple[SimulatorHandle, int]:
    """An instant Claude simulator (no latency, no limit) in a process of its own, stopped
    with `stack`; its handle and process id. A process, not a thread of the benchmark: it
    must not compete for this process's GIL with what the benchmark measures."""
    port = free_port()
    child = start_simulator(port, rpm=None)
    stack.callback(child.stop)
    handle = SimulatorHandle(f"http://127.0.0.1:{port}")
    stack.callback(handle.close)
    return handle, child.process.pid


def namespace_env(prefix: str, broker: str, simulator: SimulatorHandle) -> dict[str, str]:
    """Settings that give a scenario its own app id and topics on a shared broker, pointed
    at `simulator`."""
    app_id = f"{prefix}{uuid.uuid4().hex[:10]}"
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "KAFKA_APP_ID": app_id,
        "TOPIC_JOBS": f"{app_id}.jobs",
        "TOPIC_RECORDS": f"{app_id}.records",
        "TOPIC_RECORDS_BULK": f"{app_id}.records.bulk",
        "TOPIC_RESULTS": f"{app_id}.results",
        "TOPIC_DLQ": f"{app_id}.dlq",
        "TOPIC_SPEND": f"{app_id}.spend",
        "ANTHROPIC_API_KEY": "sk-bench-not-a-secret",
        "ANTHROPIC_BASE_URL": simulator.base_url,
    }


def start_worker(shared: dict[str, str], workdir: Path) -> ServiceProcess:
    """A worker that is not waited for (see wait_cluster_ready)."""
    # Bounds the stop of a worker whose job did not finish; a finished one drains at once.
    return start_service({"BATCH_SHUTDOWN_TIMEOUT_SECONDS": "5", **shared}, workdir, wait=False)


def stop_workers(workers: list[ServiceProcess]) -> None:
    """SIGTERM all at once (they drain in parallel), then kill whatever outlives the deadline."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            progress(f"worker on port {worker.port} ignored SIGTERM; killing it")
            worker.process.kill()
            worker.process.wait()


def wait_cluster_ready(workers: list[ServiceProcess]) -> None:
    """All workers ready at the same time, and still so after SETTLE_S (rebalance done)."""
    since: list[float] = []

    def settled() -> bool:
        for worker in workers:
            worker.ensure_alive()
        if not all(worker.is_ready() for worker in workers):
            since.clear()
            return False
        if not since:
            since.append(time.monotonic())
        return time.monotonic() - since[0] >= SETTLE_S

    wait_until(settled, timeout=READY_TIMEOUT_S, interval=0.2, what="all workers ready")


def job_status(worker: ServiceProcess, job_id: str) -> dict[str, Any] | None:
    """The job's counters (no results), or None when the worker did not answer 200."""
    try:
        # limit=0: counters only; the results list would grow with every poll.
        reply = httpx.get(
            f"{worker.base_url}/api/v1/batch/{job_id}/status", params={"limit": 0}, timeout=10.0
        )
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    body: dict[str, Any] = reply.json()
    return body


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user and system, in seconds (/proc/<pid>/stat)."""
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str | int]:
    """What the figures were measured on (nproc as `nproc` prints it, CPU model)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        # What `nproc` prints: the CPUs this process may run on, not all the host has.
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """Installed for SIGTERM: unwinds through every ExitStack, so workers, simulator and
    broker are all stopped."""
    raise KeyboardInterrupt


def render(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table, columns right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    head = " | ".join(cell.rjust(w) for cell, w in zip(header, widths, strict=True))
    rule = "-+-".join("-" * w for w in widths)
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return [head, rule, *lines]


R = TypeVar("R")


def results_json(results: Sequence[Any], host: dict[str, str | int]) -> dict[str, Any]:
    """`--json` output of a benchmark that measures a list of scenarios (dataclasses)."""
    return {"results": [asdict(r) for r in results], "machine": host}


def bench_main(
    run: Callable[[], R],
    *,
    as_json: bool,
    to_json: Callable[[R, dict[str, str | int]], dict[str, Any]],
    to_text: Callable[[R, dict[str, str | int]], str],
) -> int:
    """A benchmark's entry point: SIGTERM stops it like Ctrl-C (children are stopped), then
    its result goes to stdout as text or JSON, with the machine's description. Returns the
    exit status: 0, or 130 when interrupted."""
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        result = run()
    except KeyboardInterrupt:
        progress("interrupted; children stopped")
        return 130
    host = machine()
    print(json.dumps(to_json(result, host), indent=2) if as_json else to_text(result, host))
    progress(f"total {elapsed():.1f} s")
    return 0
