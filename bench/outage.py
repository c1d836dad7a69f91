"""A provider outage in the middle of a job: what it costs in failed records, calls, time.

`python -m bench.outage` starts one embedded Apache Kafka, a Claude simulator and one
`python -m stream_app` worker with the service's default breaker settings, submits one job,
and once half of it is done switches the simulator to answer every call with 529
("overloaded") for `--outage` seconds (default 120). Everything is measured from the
simulator's request log and the service's HTTP API; the service is a black box.

Reported: records failed (0 expected), calls the provider received while it was down (and
how many of them were single probes), how long the worker took to notice, whether
/api/v1/ready stayed 200 and the job's status said "unavailable", and the time from the end
of the outage to the first served call and to the job's completion.

Progress goes to stderr; stdout holds only the result (JSON with `--json`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    bench_main,
    namespace_env,
    progress,
    start_broker,
)
from simulator import SimulatorConfig
from simulator.testing import run_simulator
from stream_app.running.testing import ServiceProcess, start_service, wait_until


@dataclass(frozen=True)
class Options:
    records: int
    outage: float
    rpm: int
    latency_ms: float
    json: bool


@dataclass(frozen=True)
class Outcome:
    records: int
    outage_s: float
    rpm: int
    completed: bool  # every record got an outcome
    completed_count: int
    failed_count: int
    stalled: bool  # the job reported no progress for BATCH_STALL_AFTER_SECONDS
    paid_calls: int  # HTTP 200s: one per record means nobody was paid twice
    refused_calls: int  # 529s, calls in flight when the outage began included
    calls_during_outage: int  # calls that arrived while it lasted
    probes_during_outage: int
    noticed_after_s: float | None
    ready_always_200: bool
    status_said_unavailable: bool
    resumed_after_s: float | None  # end of outage -> first served call
    completed_after_s: float  # end of outage -> job completed
    total_s: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--outage", type=float, default=120.0, help="seconds of 529s")
    parser.add_argument("--rpm", type=int, default=600, help="CLAUDE_REQUESTS_PER_MINUTE")
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return Options(args.records, args.outage, args.rpm, args.latency_ms, args.json)


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _status(http: httpx.Client, job_id: str) -> dict[str, Any]:
    reply = http.get(f"/api/v1/batch/{job_id}/status", params={"limit": "0"})
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    return body


def measure(opts: Options, worker: ServiceProcess, sim: Any) -> Outcome:
    texts = [
        f"Ticket {i}: the invoice for order {1000 + i} shows the wrong total; the customer "
        f"asks for a corrected invoice and a refund of the difference."
        for i in range(opts.records)
    ]
    began = time.time()
    with worker.client() as http:
        reply = http.post("/api/v1/batch", json={"records": [{"text": t} for t in texts]})
        reply.raise_for_status()
        job_id = reply.json()["job_id"]
        half = opts.records // 2
        wait_until(
            lambda: _status(http, job_id)["completed_count"] >= half,
            timeout=opts.records / (opts.rpm / 60) * 3 + 60,
            interval=0.2,
            what="half of the job",
        )
        outage_began = time.time()
        sim.configure(force_status=529)
        progress(f"outage: every call answered 529 for {opts.outage:.0f} s")
        ready_always_200, said_unavailable, since = True, False, None
        while time.time() < outage_began + opts.outage:
            ready = http.get("/api/v1/ready")
            ready_always_200 &= ready.status_code == 200
            provider = _status(http, job_id).get("provider", {})
            if provider.get("state") == "unavailable":
                said_unavailable = True
                since = since or _at(provider["since"])
            time.sleep(0.5)
        sim.configure(force_status=None)
        outage_ended = time.time()
        progress("outage over")
        final: dict[str, Any] = {}

        def completed() -> bool:
            final.update(_status(http, job_id))
            return final["status"] == "completed"

        try:
            wait_until(completed, timeout=opts.records / (opts.rpm / 60) * 3 + 300, interval=0.2)
        except TimeoutError:
            progress(f"job not completed: {final.get('completed_count')} of {opts.records}")
        done = time.time()
    stats = sim.stats()
    during = [r for r in stats["requests"] if outage_began <= r["t"] <= outage_ended]
    probes = [r for r in during if since is not None and r["t"] > since + 0.2]
    served_after = [
        r["t"] for r in stats["requests"] if r["status"] == 200 and r["t"] > outage_ended
    ]
    return Outcome(
        records=opts.records,
        outage_s=round(outage_ended - outage_began, 1),
        rpm=opts.rpm,
        completed=final["status"] == "completed",
        completed_count=int(final["completed_count"]),
        failed_count=int(final["failed_count"]),
        stalled=bool(final.get("stalled")),
        paid_calls=int(stats["by_status"].get("200", 0)),
        refused_calls=int(stats["by_status"].get("529", 0)),
        calls_during_outage=len(during),
        probes_during_outage=len(probes),
        noticed_after_s=round(since - outage_began, 2) if since is not None else None,
        ready_always_200=ready_always_200,
        status_said_unavailable=said_unavailable,
        resumed_after_s=round(min(served_after) - outage_ended, 2) if served_after else None,
        completed_after_s=round(done - outage_ended, 1),
        total_s=round(done - began, 1),
    )


def run(opts: Options) -> Outcome:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-outage-")))
        broker = start_broker(stack, workdir)
        sim = stack.enter_context(run_simulator(SimulatorConfig(latency_ms=opts.latency_ms)))
        env = {
            **namespace_env("outage", broker, sim),
            "CLAUDE_REQUESTS_PER_MINUTE": str(opts.rpm),
            "BATCH_SHUTDOWN_TIMEOUT_SECONDS": "5",
        }
        worker = start_service(env, workdir / "worker")
        stack.callback(worker.stop)
        progress(f"worker ready; submitting {opts.records} records")
        return measure(opts, worker, sim)


def rows(outcome: Outcome) -> list[list[str]]:
    """[figure, value, target] rows for `python -m bench`'s one table."""
    return [
        [
            f"{outcome.outage_s:g} s outage: failed, paid calls",
            f"{outcome.failed_count}, {outcome.paid_calls}",
            f"0, {outcome.records}",
        ],
        [
            "outage: resumed / completed after its end",
            f"{outcome.resumed_after_s} s / {outcome.completed_after_s} s",
            "resumed <= 15 s",
        ],
    ]


def report(outcome: Outcome, host: dict[str, str | int]) -> str:
    rows = [
        ("records", f"{outcome.records} ({outcome.rpm} requests/minute)"),
        ("outage (every call 529)", f"{outcome.outage_s} s, from half of the job"),
        ("records failed", f"{outcome.failed_count} (succeeded {outcome.completed_count})"),
        (
            "job completed",
            "yes" if outcome.completed else f"NO (stalled: {outcome.stalled})",
        ),
        ("paid calls (HTTP 200)", str(outcome.paid_calls)),
        ("calls refused (529)", f"{outcome.refused_calls} (in flight at the start included)"),
        ("calls during the outage", str(outcome.calls_during_outage)),
        ("  of which single probes", str(outcome.probes_during_outage)),
        ("worker noticed after", f"{outcome.noticed_after_s} s"),
        ("/api/v1/ready always 200", str(outcome.ready_always_200)),
        ("job status said unavailable", str(outcome.status_said_unavailable)),
        ("first call served after the end", f"{outcome.resumed_after_s} s"),
        ("job completed after the end", f"{outcome.completed_after_s} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)} | {value}" for name, value in rows]
    machine_line = ", ".join(f"{key} {value}" for key, value in host.items())
    return "\n".join([*lines, f"machine: {machine_line}"])


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    return bench_main(
        lambda: run(opts),
        as_json=opts.json,
        to_json=lambda outcome, host: {"result": asdict(outcome), "machine": host},
        to_text=report,
    )


if __name__ == "__main__":
    sys.exit(main())
