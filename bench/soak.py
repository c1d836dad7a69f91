"""Faults together: a seeded chaos soak. `python -m bench.soak --seeds N` (`make soak`).

Two workers on one Apache Kafka of their own, the Claude simulator, several jobs of three
tenants (API_KEYS) running at once, and a schedule drawn from `random.Random(seed)` that
combines worker SIGKILLs (each restarted on its own state), a SIGTERM (drain, restart), a
broker restart (SIGTERM, then started again on the same data) and a provider outage
(every call answered 529 for some seconds). Then every guarantee is checked from outside:

- every job completes, on every worker that answers;
- every index exactly once in `/results`, in `results.ndjson` and in the status results;
- the status counts equal the results (succeeded, failed, skipped);
- the status tokens equal the sum of the results' tokens;
- no record failed (none of the texts carries a fault of its own: whatever failed, failed
  for a fault that was not its own);
- a record paid more than once (more than one 200 from the simulator for its text) had a
  call in flight at a SIGKILL, and the repeats are at most the calls in flight at the kills;
- a SIGTERM stops the worker within STOP_BOUND_SECONDS.

For a job that does not complete, the outcomes on `batch.results` are read from Kafka, so
the report tells a job whose outcomes all reached Kafka but were not counted from one whose
records got no outcome.

tests/test_chaos.py runs one seed of it in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from simulator import SimulatorConfig
from simulator.testing import SimulatorHandle, run_simulator
from stream_app.running.embedded import ChildProcess, free_port
from stream_app.running.kafka_local import LocalKafka
from stream_app.running.testing import ServiceProcess, start_service, wait_until

# Starts a broker on (port, data directory); tests pass their `private_broker` fixture.
BrokerStarter = Callable[[int, Path], ChildProcess]
TENANTS = {"alpha": "soak-key-alpha", "beta": "soak-key-beta", "gamma": "soak-key-gamma"}
WORKERS = 2
PARTITIONS = 8
# The simulator's latency: calls are in flight when a worker is killed.
CALL_LATENCY_MS = 250
CONCURRENCY = 5
# The cluster's provider budget: jobs run for about a minute, through the whole schedule.
REQUESTS_PER_MINUTE = 600
# A call that ended this long after a SIGKILL was never answered to the killed worker
# (the simulator logs a call's end before it writes the answer; tests/test_crash_recovery).
DEATH_MARGIN_SECONDS = 0.01
# How long after its call ends a record's outcome may still be unacknowledged and its offset
# uncommitted (Faust commits, after a flush, every 2.8 s): a SIGKILL then costs its call again.
UNFLUSHED_SECONDS = 3.0
# A rebalance's revoke comes at most this long before the assignment that ends it (the
# rebalance timeout bounds it; measured well under it here).
HANDOVER_SECONDS = 10.0
# A worker given SIGTERM must be gone within this, whatever the broker does
# (docs/guarantees-faults.md).
STOP_BOUND_SECONDS = 15.0
SESSION_TIMEOUT_SECONDS = 12
# After the last fault, how long the jobs have to complete.
FINISH_TIMEOUT_SECONDS = 150.0


@dataclass(frozen=True, order=True)
class Fault:
    """One fault of the schedule: `at` seconds after the jobs were submitted, lasting `down`
    seconds (until the worker or the broker is started again, or the outage ends)."""

    at: float
    kind: str  # "kill" (SIGKILL a worker), "term" (SIGTERM), "broker", "outage"
    down: float
    worker: int = -1

    def __str__(self) -> str:
        who = f" w{self.worker}" if self.worker >= 0 else ""
        return f"{self.kind}{who}@{self.at:.0f}s/{self.down:.0f}s"


def schedule(seed: int, *, span: float = 45.0) -> list[Fault]:
    """The faults of one run, drawn from `seed`: two SIGKILLs and one SIGTERM spread over
    the two workers (a worker's faults at least its downtime + 10 s apart, so it is back
    and has rejoined before the next), one broker restart and one provider outage, all
    within the first `span` seconds. The faults of different kinds overlap freely."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    kinds = ["kill", "kill", "term"]
    rng.shuffle(kinds)
    free_at = [rng.uniform(3.0, 10.0) for _ in range(WORKERS)]
    for kind in kinds:
        worker = min(range(WORKERS), key=lambda w: (free_at[w], rng.random()))
        at = free_at[worker] + rng.uniform(0.0, 6.0)
        down = rng.uniform(0.5, 4.0)
        faults.append(Fault(round(at, 1), kind, round(down, 1), worker))
        free_at[worker] = at + down + 10.0
    faults.append(
        Fault(round(rng.uniform(8.0, span - 10.0), 1), "broker", round(rng.uniform(3.0, 8.0), 1))
    )
    faults.append(
        Fault(round(rng.uniform(5.0, span - 15.0), 1), "outage", round(rng.uniform(8.0, 15.0), 1))
    )
    return sorted(faults)


def job_plan(seed: int) -> list[tuple[str, int, str]]:
    """(tenant, records, priority) of each job of the run, drawn from `seed`."""
    rng = random.Random(seed * 7919 + 1)
    tenants = list(TENANTS)
    plan = [(tenants[i % len(tenants)], rng.randint(80, 160), "normal") for i in range(4)]
    plan.append((rng.choice(tenants), rng.randint(20, 40), "high"))
    return plan


def texts(job: int, count: int, run: str) -> list[str]:
    """Texts unique in their first 80 characters (the simulator's stats keep that much)."""
    return [
        f"{run}-{job}-{i}: the invoice export failed again and customers asked for a refund."
        for i in range(count)
    ]


@dataclass
class JobCheck:
    job_id: str
    tenant: str
    total: int
    status: str = "?"
    counted: int = 0  # succeeded + failed + skipped in the status
    results: int = 0  # distinct indexes in /results
    problems: list[str] = field(default_factory=list)
    # Distinct indexes with an outcome on batch.results (read from Kafka), when it hung.
    on_kafka: int | None = None


@dataclass
class SoakOutcome:
    seed: int
    faults: list[Fault]
    jobs: list[JobCheck] = field(default_factory=list)
    calls: int = 0
    records: int = 0
    repeated: int = 0  # paid calls beyond one per record
    in_flight_at_kills: list[int] = field(default_factory=list)
    stop_seconds: list[float] = field(default_factory=list)
    # Workers that exited by themselves and were started again (e.g. started while the
    # broker was down: they exit non-zero, to be restarted).
    restarts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def hung(self) -> int:
        return sum(1 for job in self.jobs if job.status != "completed")

    @property
    def missing(self) -> int:
        return sum(job.total - job.results for job in self.jobs)

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [f"job {j.job_id}: {p}" for j in self.jobs for p in j.problems]

    @property
    def ok(self) -> bool:
        return not self.all_problems


def _ready(worker: ServiceProcess) -> bool:
    try:
        return httpx.get(f"{worker.base_url}/api/v1/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _local_kafka(port: int, data: Path) -> ChildProcess:
    return LocalKafka(data).start(port)


class Cluster:
    """The broker, the simulator and the workers of one run, and the faults done to them."""

    def __init__(
        self,
        workdir: Path,
        simulator: SimulatorHandle,
        run: str,
        start_broker: BrokerStarter | None = None,
    ) -> None:
        self.workdir = workdir
        self._start_broker = start_broker or _local_kafka
        self.simulator = simulator
        self.broker_port = free_port()
        self.broker_data = workdir / "kafka"
        self.broker: ChildProcess | None = None
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.broker_port}",
            "KAFKA_APP_ID": run,
            "TOPIC_JOBS": f"{run}.jobs",
            "TOPIC_RECORDS": f"{run}.records",
            "TOPIC_RESULTS": f"{run}.results",
            "TOPIC_DLQ": f"{run}.dlq",
            "ANTHROPIC_API_KEY": "sk-soak-not-a-secret",
            "ANTHROPIC_BASE_URL": simulator.base_url,
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "CLAUDE_REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE),
            "BATCH_MAX_CONCURRENT_LLM_CALLS": str(CONCURRENCY),
            "BATCH_RETRY_BACKOFF_SECONDS": "0.05",
            "API_KEYS": ",".join(f"{name}:{key}" for name, key in TENANTS.items()),
            # A worker's consumer thread must heartbeat within the session timeout; on a
            # 2-core machine shared by several test runs (load average 30) 6 s was missed
            # even by idle workers, and the group never settled. The soak is about faults
            # it injects, not about the machine's scheduling.
            "KAFKA_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT_SECONDS),
        }
        self.workers: list[ServiceProcess | None] = [None] * WORKERS
        # Workers a fault holds down until its restart; any other that exits is started
        # again, as a supervisor (systemd, Kubernetes) would.
        self.down: set[int] = set()
        self.restarts: list[str] = []
        self.kills: list[float] = []
        self.stop_seconds: list[float] = []
        self.events: list[str] = []
        self._began = time.monotonic()

    def note(self, what: str) -> None:
        line = f"[{time.monotonic() - self._began:6.1f}s] {what}"
        self.events.append(line)
        print(line, file=sys.stderr, flush=True)

    def start_broker(self) -> None:
        self.broker = self._start_broker(self.broker_port, self.broker_data)
        self.note("broker up")

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop(timeout=60.0)
            self.broker = None
            self.note("broker stopped (SIGTERM)")

    def start_worker(self, index: int) -> None:
        self.down.discard(index)
        self.workers[index] = start_service(self.env, self.workdir / f"worker-{index}", wait=False)
        self.note(f"worker {index} started")

    def kill(self, index: int) -> None:
        worker = self.workers[index]
        self.down.add(index)
        if worker is None or worker.process.poll() is not None:
            return
        self.kills.append(time.time())
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        self.note(f"worker {index} SIGKILLed")

    def terminate(self, index: int) -> None:
        """SIGTERM; the stop time is measured and bounded (SIGKILL after the bound)."""
        worker = self.workers[index]
        self.down.add(index)
        if worker is None or worker.process.poll() is not None:
            return
        began = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(STOP_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            self.kills.append(time.time())
            worker.process.kill()
            worker.process.wait()
        took = time.monotonic() - began
        self.stop_seconds.append(took)
        self.note(
            f"worker {index} stopped by SIGTERM in {took:.1f} s (exit {worker.process.returncode})"
        )

    def supervise(self) -> None:
        """Start again every worker that exited by itself (no fault holds it down)."""
        for index, worker in enumerate(self.workers):
            if index in self.down or worker is None or worker.process.poll() is None:
                continue
            code = worker.process.returncode
            self.restarts.append(f"w{index} exit {code}")
            self.note(f"worker {index} exited by itself (code {code}): started again")
            self.start_worker(index)

    def live(self) -> list[ServiceProcess]:
        return [w for w in self.workers if w is not None and w.process.poll() is None]

    def wait_ready(self, timeout: float = 180.0) -> bool:
        """Whether both workers were ready within `timeout` (restarting any that exits)."""

        def ready() -> bool:
            self.supervise()
            live = self.live()
            return len(live) == WORKERS and all(_ready(w) for w in live)

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what="both workers ready")
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        for worker in self.live():
            worker.process.send_signal(signal.SIGTERM)
        for started in self.workers:
            if started is None:
                continue
            try:
                started.process.wait(30.0)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()
        if self.broker is not None:
            self.broker.stop(timeout=60.0)


def _actions(
    cluster: Cluster, faults: Sequence[Fault]
) -> list[tuple[float, str, Callable[[], None]]]:
    """Each fault as its start and its end, (seconds after the submit, what, do it)."""
    out: list[tuple[float, str, Callable[[], None]]] = []
    for fault in faults:
        w = fault.worker
        if fault.kind in ("kill", "term"):
            hit = cluster.kill if fault.kind == "kill" else cluster.terminate
            out.append((fault.at, str(fault), functools.partial(hit, w)))
            out.append(
                (fault.at + fault.down, f"restart w{w}", functools.partial(cluster.start_worker, w))
            )
        elif fault.kind == "broker":
            out.append((fault.at, str(fault), cluster.stop_broker))
            out.append((fault.at + fault.down, "broker start", cluster.start_broker))
        else:
            out.append((fault.at, str(fault), lambda: _outage(cluster, True)))
            out.append((fault.at + fault.down, "outage ends", lambda: _outage(cluster, False)))
    # At one instant, ends before starts does not matter; time order does.
    return sorted(out, key=lambda action: action[0])


def _outage(cluster: Cluster, on: bool) -> None:
    cluster.simulator.configure(force_status=529 if on else None)
    cluster.note("provider outage begins (529)" if on else "provider outage ends")


def _auth(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TENANTS[tenant]}"}


def _get(worker: ServiceProcess, path: str, tenant: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{worker.base_url}{path}", params=params, headers=_auth(tenant), timeout=30.0)


def _submit(cluster: Cluster, plan: list[tuple[str, int, str]], run: str) -> list[JobCheck]:
    jobs = []
    for n, (tenant, count, priority) in enumerate(plan):
        worker = cluster.live()[n % WORKERS]
        body = {"records": [{"text": t} for t in texts(n, count, run)], "priority": priority}
        reply = httpx.post(
            f"{worker.base_url}/api/v1/batch", json=body, headers=_auth(tenant), timeout=60.0
        )
        reply.raise_for_status()
        jobs.append(JobCheck(reply.json()["job_id"], tenant, count))
    return jobs


def _wait_completed(cluster: Cluster, jobs: list[JobCheck], timeout: float) -> None:
    def done() -> bool:
        cluster.supervise()
        for job in jobs:
            if job.status == "completed":
                continue
            for worker in cluster.live():
                with contextlib.suppress(httpx.HTTPError):
                    reply = _get(worker, f"/api/v1/batch/{job.job_id}/status", job.tenant, limit=0)
                    if reply.status_code == 200:
                        body = reply.json()
                        job.status = body["status"]
                        job.counted = (
                            body["completed_count"] + body["failed_count"] + body["skipped_count"]
                        )
                        break
        return all(job.status == "completed" for job in jobs)

    with contextlib.suppress(TimeoutError):
        wait_until(done, timeout=timeout, interval=1.0, what="every job completed")


def check_job(worker: ServiceProcess, job: JobCheck) -> None:
    """Every guarantee about one job, as `worker` answers; problems go to `job.problems`."""
    name = f"worker :{worker.port}"
    base = f"/api/v1/batch/{job.job_id}"
    body = _get(worker, f"{base}/status", job.tenant, limit=job.total).json()
    job.status = body["status"]
    counts = (body["completed_count"], body["failed_count"], body["skipped_count"])
    job.counted = sum(counts)
    if body["status"] != "completed":
        job.problems.append(f"{name}: status {body['status']} counts {counts} of {job.total}")
    paged: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = _get(worker, f"{base}/results", job.tenant, offset=offset, limit=1000).json()
        paged += page["results"]
        offset = page["next_offset"]
    exported = [
        json.loads(line)
        for line in _get(worker, f"{base}/results.ndjson", job.tenant).text.splitlines()
        if line.strip()
    ]
    everything = list(range(job.total))
    job.results = len({r["index"] for r in paged})
    for where, results in (
        ("/results", paged),
        ("results.ndjson", exported),
        ("/status", body["results"]),
    ):
        indexes = sorted(r["index"] for r in results)
        if indexes != everything:
            seen = Counter(indexes)
            missing = [i for i in everything if i not in seen]
            twice = [i for i, n in seen.items() if n > 1]
            job.problems.append(
                f"{name} {where}: {len(missing)} missing {missing[:10]}, twice {twice[:10]}"
            )
    succeeded = sum(1 for r in paged if r["success"])
    failed = [r for r in paged if not r["success"]]
    if (body["completed_count"], body["failed_count"] + body["skipped_count"]) != (
        succeeded,
        len(failed),
    ):
        job.problems.append(
            f"{name}: counts {counts} but results {succeeded} succeeded, {len(failed)} not"
        )
    if failed:
        job.problems.append(f"{name}: {len(failed)} records failed: {failed[0].get('error')}")
    tokens = sum(r["response"]["metadata"]["tokens_used"] for r in paged if r["success"])
    if body["total_tokens_used"] != tokens:
        job.problems.append(f"{name}: {body['total_tokens_used']} tokens, results sum to {tokens}")


def outcomes_on_kafka(bootstrap: str, topic: str, job_ids: set[str]) -> dict[str, set[int]]:
    """job -> indexes with an outcome on `topic` (batch.results), read from its start."""
    from aiokafka import AIOKafkaConsumer

    async def read() -> dict[str, set[int]]:
        found: dict[str, set[int]] = {job: set() for job in job_ids}
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            parts = consumer.assignment()
            while not parts:
                await asyncio.sleep(0.1)
                parts = consumer.assignment()
            ends = await consumer.end_offsets(list(parts))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    for message in messages:
                        value = json.loads(message.value)
                        if value.get("job_id") in found:
                            found[value["job_id"]].add(value["index"])
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def records_backlog(bootstrap: str, group: str, topic: str) -> list[str]:
    """Each partition of `topic` with records the group has not committed:
    "p<partition> committed <offset> end <offset>" (what a hung job's records wait on)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        finally:
            await consumer.stop()
            await admin.close()
        lines = []
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None else -1
            if ends[tp] > max(offset, 0):
                lines.append(f"p{tp.partition} committed {offset} end {ends[tp]}")
        return lines

    return asyncio.run(read())


def handovers(workdir: Path) -> list[float]:
    """When a worker of the run got a new assignment (its `budget share` log line, epoch
    seconds): the partitions it lost, it lost within HANDOVER_SECONDS before."""
    times = []
    for log_path in workdir.glob("worker-*/service-*.log"):
        for line in log_path.read_text(errors="replace").splitlines():
            if "budget share" in line:
                stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.replace(tzinfo=dt.UTC).timestamp())
    return sorted(times)


def paid_calls(
    simulator: SimulatorHandle, kills: list[float], moves: Sequence[float] = ()
) -> tuple[int, int, int, list[int], list[str]]:
    """(calls, paid texts, repeated paid calls, calls in flight at each SIGKILL, problems).

    A record may be paid again when its call was in flight at a SIGKILL, or had just ended
    before it (its outcome and processed-records entry reach the broker, and its offset is
    committed, up to one commit interval later: UNFLUSHED_SECONDS), or was in flight while
    its partition moved to another worker (`moves`: assignment times; the revoke came up to
    HANDOVER_SECONDS before): its answer then comes to a worker that no longer owns it."""
    requests = simulator.stats()["requests"]
    paid = Counter(r["text"] for r in requests if r["status"] == 200)
    repeated = sum(n - 1 for n in paid.values())
    in_flight = [
        [r for r in requests if r["t"] < k and r["t_done"] > k + DEATH_MARGIN_SECONDS]
        for k in kills
    ]
    unflushed = [
        [r for r in requests if k - UNFLUSHED_SECONDS <= r["t_done"] <= k + DEATH_MARGIN_SECONDS]
        for k in kills
    ]
    moved = [
        r
        for r in requests
        if any(m - HANDOVER_SECONDS <= r["t_done"] and r["t"] <= m for m in moves)
    ]
    hit = {r["text"] for calls in [*in_flight, *unflushed, moved] for r in calls}
    problems = []
    unexplained = [text for text, n in paid.items() if n > 1 and text not in hit]
    if unexplained:
        calls = sorted(
            (round(r["t"] - requests[0]["t"], 1), round(r["t_done"] - requests[0]["t"], 1))
            for r in requests
            if r["text"] == unexplained[0]
        )
        at = [round(k - requests[0]["t"], 1) for k in kills]
        problems.append(
            f"{len(unexplained)} records paid more than once without a call in flight at a "
            f"kill, e.g. {unexplained[0][:40]!r}: calls (start, end) {calls}, kills at {at} "
            "(seconds after the first call)"
        )
    bound = sum(len(c) for c in in_flight) + sum(len(c) for c in unflushed) + len(moved)
    if repeated > bound:
        problems.append(
            f"{repeated} repeated paid calls, more than the {bound} in flight at the kills "
            "(or just ended before them) or at partition handovers"
        )
    return len(requests), len(paid), repeated, [len(c) for c in in_flight], problems


def run_soak(
    seed: int,
    workdir: Path,
    simulator: SimulatorHandle | None = None,
    start_broker: BrokerStarter | None = None,
) -> SoakOutcome:
    """One run of the soak with `seed`, its broker and workers under `workdir` (with the
    `simulator` given, or one of its own; the broker started by `start_broker`, on the same
    port and data again after its restart). Never raises for a broken guarantee: the
    outcome lists the problems."""
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if simulator is None:
            simulator = stack.enter_context(run_simulator(SimulatorConfig()))
        simulator.configure(latency_ms=CALL_LATENCY_MS, force_status=None)
        simulator.reset()
        run = f"soak{seed}x{uuid.uuid4().hex[:6]}"
        cluster = Cluster(workdir, simulator, run, start_broker)
        faults = schedule(seed)
        outcome = SoakOutcome(seed, faults)
        stack.callback(cluster.stop)
        cluster.start_broker()
        for index in range(WORKERS):
            cluster.start_worker(index)
        if not cluster.wait_ready(timeout=300.0):
            outcome.problems.append("the workers did not become ready before the faults")
            outcome.seconds = time.monotonic() - began
            return outcome
        cluster.note(f"seed {seed}: {', '.join(map(str, faults))}")
        plan = job_plan(seed)
        outcome.jobs = _submit(cluster, plan, run)
        outcome.records = sum(job.total for job in outcome.jobs)
        cluster.note(f"submitted {len(plan)} jobs, {outcome.records} records")
        t0 = time.monotonic()
        for at, _what, do in _actions(cluster, faults):
            while time.monotonic() < t0 + at:
                cluster.supervise()
                time.sleep(0.1)
            do()
        _outage(cluster, False)  # whatever happened, the provider is back
        if not cluster.wait_ready():
            outcome.problems.append("the workers were not ready again within 180 s")
        _wait_completed(cluster, outcome.jobs, FINISH_TIMEOUT_SECONDS)
        for worker in cluster.live():
            for job in outcome.jobs:
                try:
                    check_job(worker, job)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    job.problems.append(f"worker :{worker.port}: could not check: {exc!r}")
        hung = {job.job_id for job in outcome.jobs if job.status != "completed"}
        if hung:
            on_kafka = outcomes_on_kafka(
                cluster.env["KAFKA_BOOTSTRAP_SERVERS"], cluster.env["TOPIC_RESULTS"], hung
            )
            with contextlib.suppress(Exception):
                waiting = records_backlog(
                    cluster.env["KAFKA_BOOTSTRAP_SERVERS"], run, cluster.env["TOPIC_RECORDS"]
                )
                outcome.problems.append(f"records not committed: {'; '.join(waiting) or 'none'}")
            for job in outcome.jobs:
                if job.job_id in on_kafka:
                    job.on_kafka = len(on_kafka[job.job_id])
                    job.problems.append(
                        f"hung: {job.counted} counted, {job.on_kafka} of {job.total} indexes "
                        "have an outcome on batch.results"
                    )
        calls, _, repeated, in_flight, problems = paid_calls(
            simulator, cluster.kills, handovers(workdir)
        )
        outcome.calls, outcome.repeated, outcome.in_flight_at_kills = calls, repeated, in_flight
        outcome.problems += problems
        outcome.stop_seconds = cluster.stop_seconds
        outcome.restarts = cluster.restarts
        outcome.problems += [
            f"a SIGTERM took {s:.1f} s (bound {STOP_BOUND_SECONDS:g} s)"
            for s in cluster.stop_seconds
            if s >= STOP_BOUND_SECONDS
        ]
    outcome.seconds = time.monotonic() - began
    return outcome


HEADER = [
    "seed",
    "faults",
    "records",
    "hung",
    "missing",
    "repeated",
    "in flight at kills",
    "SIGTERM s",
    "restarted",
    "s",
    "outcome",
]


def row(outcome: SoakOutcome) -> list[str]:
    return [
        str(outcome.seed),
        " ".join(map(str, outcome.faults)),
        str(outcome.records),
        str(outcome.hung),
        str(outcome.missing),
        str(outcome.repeated),
        "+".join(map(str, outcome.in_flight_at_kills)) or "0",
        " ".join(f"{s:.1f}" for s in outcome.stop_seconds) or "-",
        str(len(outcome.restarts)),
        f"{outcome.seconds:.0f}",
        "exact" if outcome.ok else f"{len(outcome.all_problems)} problems",
    ]


def _runs(seeds: Sequence[int], root: Path) -> Iterator[SoakOutcome]:
    for seed in seeds:
        yield run_soak(seed, root / f"seed-{seed}")


def main(argv: Sequence[str] | None = None) -> int:
    from bench.harness import render, sigterm_as_interrupt

    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds (10)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (1)")
    parser.add_argument("--keep", type=Path, help="keep the runs' logs and data here")
    args = parser.parse_args(argv)
    seeds = list(range(args.first, args.first + args.seeds))
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    rows: list[list[str]] = []
    failed = 0
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        for outcome in _runs(seeds, root):
            rows.append(row(outcome))
            # Each seed's row as it ends (stdout gets the whole table at the end).
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
            for problem in outcome.all_problems:
                print(f"seed {outcome.seed}: {problem}", file=sys.stderr, flush=True)
            failed += not outcome.ok
    print("\n".join(render(HEADER, rows)))
    print(f"{len(seeds) - failed} of {len(seeds)} seeds exact")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
