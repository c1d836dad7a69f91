"""Reading records back from `batch.records` by their partition and offset (what a retry
sends again; each outcome remembers where its record was read).

Why read them back rather than keep them: the records are already on the topic for as
long as its retention keeps them, and keeping every failed record's text in the result
table would store the texts (often personal data) a second time, in a compacted
changelog that never expires. The cost is one fetch per run of nearby offsets: a consumer
without a group seeks to the first wanted offset of a partition, reads forward while
wanted offsets follow closely, and seeks again past a gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import TopicPartition

from stream_app.kafka.groupless import groupless_consumer

# Seek again rather than read through more than this many other records.
_GAP = 500
# Empty fetches in a row before an offset is taken as gone.
_EMPTY_FETCHES = 3


async def read_back(
    bootstrap_servers: str,
    topic: str,
    wanted: Mapping[int, list[int]],
    timeout: float = 30.0,
) -> dict[tuple[int, int], bytes]:
    """(partition, offset) -> the message's value, for every wanted offset per partition
    that the topic still holds; offsets the retention removed are left out. Raises
    TimeoutError after `timeout` seconds (the broker does not answer)."""
    return await asyncio.wait_for(_read(bootstrap_servers, topic, wanted), timeout)


async def _read(
    bootstrap_servers: str, topic: str, wanted: Mapping[int, list[int]]
) -> dict[tuple[int, int], bytes]:
    found: dict[tuple[int, int], bytes] = {}
    async with groupless_consumer(bootstrap_servers) as consumer:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            pending = sorted(o for o in set(wanted[tp.partition]) if starts[tp] <= o < ends[tp])
            wanted_here = set(pending)
            i = 0
            while i < len(pending):
                consumer.seek(tp, pending[i])
                empty = 0
                while i < len(pending):
                    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
                    messages = batch.get(tp, [])
                    if not messages:
                        empty += 1
                        if empty < _EMPTY_FETCHES:
                            continue
                        i += 1  # nothing there any more: the next wanted offset
                        break
                    for message in messages:
                        if message.offset in wanted_here and message.value is not None:
                            found[(tp.partition, message.offset)] = message.value
                    last = messages[-1].offset
                    while i < len(pending) and pending[i] <= last:
                        i += 1
                    if i < len(pending) and pending[i] - last > _GAP:
                        break  # seek past the gap
        return found
