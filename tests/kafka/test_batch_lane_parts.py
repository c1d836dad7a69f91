"""Parts of the batch lane without Kafka. The reservations for a provider batch
(BatchLane._reserve): asked RESERVE_AT_ONCE at a time, judged in order; the batch is cut
at the first record that must wait, and what was reserved past it, or before a failure, is
released. The records of a resumed batch whose lane deliveries do not come again
(BatchLane._rejoin): read back from their records topic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas import BatchRecord, RecordEvent
from stream_app.core.settings import Settings
from stream_app.jobs.batch_outcomes import LaneItem
from stream_app.jobs.spend_ledger import Verdict
from stream_app.kafka import batch_lane
from stream_app.kafka.batch_lane import BatchLane, _Batch, _Job, _Waiting


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


def lane(rules: Rules, table: dict[str, Any] | None = None, read_back: Any = None) -> BatchLane:
    return BatchLane(
        Settings(_env_file=None),  # type: ignore[call-arg]
        client=None,  # type: ignore[arg-type]
        rules=rules,  # type: ignore[arg-type]
        cancelled=None,  # type: ignore[arg-type]
        table=table if table is not None else {},  # type: ignore[arg-type]
        lane_topic=None,  # type: ignore[arg-type]
        records_topic=None,  # type: ignore[arg-type]
        results_topic=None,  # type: ignore[arg-type]
        ledger=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        flush=lambda: None,
        read_back=read_back,
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


async def test_records_of_a_resumed_batch_that_do_not_come_again_are_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "REJOIN_SECONDS", 0.05)
    entry = {
        "indexes": [0, 1, 2, 3],
        "tries": {"0": 0, "1": 1, "2": 0, "3": 0},
        "rounds": {"2": 1},
        "at": {"1": [3, 17], "2": [0, 5], "3": [1, 9]},
    }
    table = {"j": {"batches": {"b000001": entry}}}
    asked: list[dict[int, tuple[int, int]]] = []

    async def read_back(job_id: str, positions: dict[int, tuple[int, int]]) -> dict[int, bytes]:
        asked.append(dict(positions))
        # Index 3 is no longer on its topic (retention): left out.
        return {
            i: RecordEvent(job_id=job_id, index=i, record=BatchRecord(text=f"t{i}", id=f"r{i}"))
            .model_dump_json()
            .encode()
            for i in positions
            if i != 3
        }

    job = _Job("j", None)  # type: ignore[arg-type]
    (present, _), *_ = candidates(_Job("j", None), 1)  # type: ignore[arg-type]
    batch = _Batch("b000001", [0, 1, 2, 3], {0: present})
    await lane(Rules({}), table, read_back)._rejoin(job, batch)
    assert asked == [{1: (3, 17), 2: (0, 5), 3: (1, 9)}]
    assert sorted(batch.members) == [0, 1, 2]
    one, two = batch.members[1].item, batch.members[2].item
    assert (one.tries, one.record_partition, one.record_offset) == (1, 3, 17)
    assert one.record.record.text == "t1" and one.record.record.id == "r1"
    assert two.record.retry == 1 and batch.members[2].events == []
