"""How close `POST /api/v1/batch/estimate` comes to the bill, cold and warm.

For each task (the default task and two custom ones), on one worker with a fresh broker
namespace and the Claude simulator:
- cold: the estimate of a job before any record of that task was ever billed, then the job
  run, and its bill (the job's `estimated_cost_usd`, exact from the billed tokens, checked
  against what the simulator billed);
- warm: the worker is restarted (the usage history must survive it), then the estimate of
  another job of the same task, with other texts, and its bill.
The error is (estimate - bill) / bill; the target is within 15 % either way, and the bill
inside the estimate's range.

    .venv/bin/python -m bench.estimate_accuracy             # table
    .venv/bin/python -m bench.estimate_accuracy --records 200 --json
"""

from __future__ import annotations

import argparse
import random
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    bench_main,
    namespace_env,
    progress,
    render,
    results_json,
    start_broker,
    start_simulator_process,
    start_worker,
    stop_workers,
)
from stream_app.running.testing import ServiceProcess, wait_until

_WORDS = (
    "invoice export button crash refund customer login password reset slow dashboard "
    "report delivery package late damaged support agent phone call waiting hours order "
    "cancel subscription price increase feature request mobile app update battery sync "
    "calendar email notification missing data backup restore account locked billing "
    "twice charged great service friendly helpful quick resolved thanks disappointed "
    "terrible awful excellent recommend never again manager escalate urgent tomorrow"
).split()

CUSTOM_TASKS: dict[str, dict[str, Any]] = {
    "triage (enum, boolean, one sentence)": {
        "instructions": "Triage the ticket: its area, urgency, whether a refund is asked "
        "for, and a one-sentence summary.",
        "output_schema": {
            "type": "object",
            "properties": {
                "area": {"type": "string", "enum": ["billing", "login", "export", "other"]},
                "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
                "refund_requested": {"type": "boolean"},
                "summary": {"type": "string"},
            },
            "required": ["area", "urgency", "refund_requested", "summary"],
            "additionalProperties": False,
        },
    },
    "entities (list of objects)": {
        "instructions": "List the products and people the text names, each with its role, "
        "and the text's overall tone.",
        "output_schema": {
            "type": "object",
            "properties": {
                "entities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "role": {"type": "string"},
                        },
                        "required": ["name", "role"],
                        "additionalProperties": False,
                    },
                },
                "tone": {"type": "string", "enum": ["positive", "neutral", "negative"]},
            },
            "required": ["entities", "tone"],
            "additionalProperties": False,
        },
    },
}


@dataclass
class Row:
    task: str
    phase: str
    records: int
    estimate_usd: float
    low_usd: float
    high_usd: float
    bill_usd: float
    error: float
    in_range: bool


def texts(rng: random.Random, count: int, tag: str) -> list[str]:
    """Support-ticket-like texts of 1 to 12 sentences (skewed short, as real tickets)."""
    out = []
    for index in range(count):
        sentences = []
        for _ in range(min(12, 1 + int(rng.expovariate(0.35)))):
            words = rng.choices(_WORDS, k=rng.randint(5, 18))
            sentences.append(" ".join(words).capitalize() + ".")
        out.append(f"{tag} {index}: " + " ".join(sentences))
    return out


def _body(task: dict[str, Any] | None, records: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"records": [{"text": t} for t in records]}
    if task is not None:
        body["task"] = task
    return body


def _measure(
    worker: ServiceProcess, task: dict[str, Any] | None, records: list[str]
) -> tuple[dict[str, Any], float]:
    with worker.client() as client:
        estimate = client.post("/api/v1/batch/estimate", json=_body(task, records), timeout=60)
        estimate.raise_for_status()
        submitted = client.post("/api/v1/batch", json=_body(task, records), timeout=60)
        submitted.raise_for_status()
        job_id = submitted.json()["job_id"]

        def done() -> dict[str, Any] | None:
            body = client.get(f"/api/v1/batch/{job_id}/status", params={"limit": 0}).json()
            return body if body["status"] in ("completed", "failed") else None

        status = wait_until(done, timeout=600, interval=0.5, what=f"job {job_id} completed")
    return estimate.json(), float(status["estimated_cost_usd"])


def _row(name: str, phase: str, estimate: dict[str, Any], bill: float) -> Row:
    point = float(estimate["cost_usd"])
    low = float(estimate.get("cost_usd_low", point))
    high = float(estimate.get("cost_usd_high", point))
    return Row(
        name,
        phase,
        estimate["records"],
        point,
        low,
        high,
        bill,
        (point - bill) / bill if bill else 0.0,
        low <= bill <= high,
    )


def _wait_ready(worker: ServiceProcess) -> None:
    # Generous: the figure is the estimate's error, not how fast a worker starts.
    def ready() -> bool:
        worker.ensure_alive()
        return worker.is_ready()

    wait_until(ready, timeout=900, interval=0.5, what="the worker ready")


def run(records: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    rng = random.Random(seed)
    tasks: dict[str, dict[str, Any] | None] = {"default": None, **CUSTOM_TASKS}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="estimate-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(stack, workdir)
        simulator, _ = start_simulator_process(stack)
        shared = {
            **namespace_env("estimate-", broker, simulator),
            "KAFKA_PARTITIONS": "4",
            "CLAUDE_REQUESTS_PER_MINUTE": "100000",
            "BATCH_MAX_CONCURRENT_LLM_CALLS": "16",
        }
        for name, task in tasks.items():
            worker = start_worker(shared, workdir / "worker")
            _wait_ready(worker)
            estimate, bill = _measure(worker, task, texts(rng, records, "Cold"))
            rows.append(_row(name, "cold", estimate, bill))
            progress(f"{name}: cold estimate {estimate['cost_usd']:.5f} bill {bill:.5f}")
            stop_workers([worker])
            worker = start_worker(shared, workdir / "worker")
            _wait_ready(worker)
            estimate, bill = _measure(worker, task, texts(rng, records, "Warm"))
            rows.append(_row(name, "warm", estimate, bill))
            progress(f"{name}: warm estimate {estimate['cost_usd']:.5f} bill {bill:.5f}")
            stop_workers([worker])
    return rows


def to_text(rows: list[Row], host: dict[str, str | int]) -> str:
    header = ["task", "phase", "records", "estimate $", "range $", "bill $", "error", "in range"]
    lines = render(
        header,
        [
            [
                r.task,
                r.phase,
                str(r.records),
                f"{r.estimate_usd:.5f}",
                f"{r.low_usd:.5f}-{r.high_usd:.5f}",
                f"{r.bill_usd:.5f}",
                f"{r.error:+.1%}",
                "yes" if r.in_range else "no",
            ]
            for r in rows
        ],
    )
    return "\n".join([*lines, f"machine: {host}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return bench_main(
        lambda: run(args.records, args.seed),
        as_json=args.json,
        to_json=results_json,
        to_text=to_text,
    )


if __name__ == "__main__":
    raise SystemExit(main())
