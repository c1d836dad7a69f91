"""The batch lane's reservations for a provider batch (BatchLane._reserve), without Kafka:
asked RESERVE_AT_ONCE at a time, judged in order; the batch is cut at the first record
that must wait, and what was reserved past it, or before a failure, is released."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas import BatchRecord, RecordEvent
from stream_app.core.settings import Settings
from stream_app.jobs.batch_outcomes import LaneItem
from stream_app.jobs.spend_ledger import Verdict
from stream_app.kafka import batch_lane
from stream_app.kafka.batch_lane import BatchLane, _Job, _Waiting


class Rules:
    """What the lane asks of JobRules here: a verdict per index, releases recorded."""

    def __init__(self, verdicts: dict[int, Verdict | Exception]) -> None:
        self.verdicts = verdicts
        self.asked: list[int] = []
        self.released: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def reserve_batch_request(self, record: RecordEvent, task: Any, token: str) -> Verdict:
        self.asked.append(record.index)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)  # a round trip through batch.spend
        self.in_flight -= 1
        verdict = self.verdicts.get(record.index, Verdict.ADMIT)
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    def release_batch_request(self, job_id: str, index: int) -> None:
        self.released.append(index)


def lane(rules: Rules) -> BatchLane:
    return BatchLane(
        Settings(_env_file=None),  # type: ignore[call-arg]
        client=None,  # type: ignore[arg-type]
        rules=rules,  # type: ignore[arg-type]
        cancelled=None,  # type: ignore[arg-type]
        table={},  # type: ignore[arg-type]
        lane_topic=None,  # type: ignore[arg-type]
        records_topic=None,  # type: ignore[arg-type]
        results_topic=None,  # type: ignore[arg-type]
        ledger=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        flush=lambda: None,
    )


def candidates(job: _Job, count: int) -> list[tuple[_Waiting, dict[str, Any]]]:
    out = []
    for index in range(count):
        record = RecordEvent(job_id="j", index=index, record=BatchRecord(text=f"t{index}"))
        waiting = _Waiting(LaneItem(record=record), [], 0.0)
        job.buffer[index] = waiting
        out.append((waiting, {"custom_id": f"r{index}"}))
    return out


async def test_admitted_requests_are_reserved_a_chunk_at_a_time_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "RESERVE_AT_ONCE", 8)
    rules = Rules({})
    job = _Job("j", None)  # type: ignore[arg-type]
    chosen, requests = await lane(rules)._reserve(job, None, "tok", candidates(job, 20))  # type: ignore[arg-type]
    assert [w.item.record.index for w in chosen] == list(range(20))
    assert [r["custom_id"] for r in requests] == [f"r{i}" for i in range(20)]
    assert rules.most_in_flight == 8 and rules.released == []


async def test_the_batch_is_cut_at_the_first_wait_and_later_reservations_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "RESERVE_AT_ONCE", 8)
    rules = Rules({5: Verdict.WAIT, 6: Verdict.WAIT})
    job = _Job("j", None)  # type: ignore[arg-type]
    chosen, _ = await lane(rules)._reserve(job, None, "tok", candidates(job, 20))  # type: ignore[arg-type]
    assert [w.item.record.index for w in chosen] == [0, 1, 2, 3, 4]
    # Asked: the first chunk only; admitted past the cut (7), released; the rest wait.
    assert sorted(rules.asked) == list(range(8)) and rules.released == [7]
    assert sorted(job.buffer) == list(range(20))  # chosen ones leave it when the batch is made


async def test_a_failed_reservation_releases_every_one_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "RESERVE_AT_ONCE", 4)
    rules = Rules({6: ConnectionError("batch.spend unreachable")})
    job = _Job("j", None)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await lane(rules)._reserve(job, None, "tok", candidates(job, 10))  # type: ignore[arg-type]
    assert sorted(rules.released) == [0, 1, 2, 3, 4, 5, 7]
