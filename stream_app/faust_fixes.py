"""Workarounds for faust-streaming 0.15.3 defects that break a guarantee of ours. Each
names the upstream report; remove it when the fix is released."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import Message

from stream_app.logs import get_logger

log = get_logger(__name__)


def guard_stale_acks(app: faust.App) -> None:
    """Never commit a message fetched before the current rebalance generation.

    Faust skips a message whose `generation_id` is older than the consumer's (it was
    fetched before a rebalance) and acknowledges it while skipping it, even on a
    `noack()` stream (faust/streams.py, `Stream.__aiter__`; faust-streaming PR #223 and
    issue #318). When the partition stayed with this worker, that ack lets the next commit
    move past a record that was never processed: the record has no outcome and its job
    never completes. Seen here once in three 2-minute outage runs.

    With this guard such an ack only marks the message done in memory: its offset stays
    uncommitted, so Kafka delivers the record again after the rebalance (at-least-once),
    and the processed-records table keeps that redelivery from paying twice.
    """
    consumer: Any = app.consumer
    acknowledge = consumer.ack
    stale = _stale_offsets(consumer)

    def ack(message: Message) -> bool:
        if message.generation_id != app.consumer_generation_id:
            message.acked = True
            consumer._unacked_messages.discard(message)
            # Until its redelivered copy is acknowledged, no commit passes it
            # (guard_unacked_commits).
            stale[message.tp].add(message.offset)
            log.debug(
                "not committing a message fetched before the rebalance",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            return False
        result: bool = acknowledge(message)
        return result

    consumer.ack = ack


def guard_unacked_commits(app: faust.App) -> None:
    """Never commit a partition past a message that was delivered and not acknowledged.

    Faust commits the first run of consecutive acknowledged offsets, and withholds the
    commit only when the run starts more than one offset past the committed one
    (`Consumer._new_offset`, faust/transport/consumer.py): when the one unacknowledged
    message sits exactly at the committed offset (or nothing was committed yet), it
    commits past it, and after a crash that record is never delivered again: it has no
    outcome and its job never completes (faust-streaming issue #606, open PR #707). Out
    of order acknowledgement (several call slots, and the scheduler's look-ahead) makes
    that common.

    With this guard the commit stops at the lowest offset of a delivered message still
    unacknowledged (Faust's own `_unacked_messages`; the look-ahead holds its messages, so
    they stay in that weak set) or skipped as stale by `guard_stale_acks` and not yet
    acknowledged again, as PR #707 does upstream.
    """
    consumer: Any = app.consumer
    new_offset = consumer._new_offset

    def capped_new_offset(tp: TP) -> int | None:
        floor = _lowest_pending(consumer, tp)
        if floor is None:
            result: int | None = new_offset(tp)
            return result
        acked: list[int] = consumer._acked[tp]
        # Offsets at or past the floor stay for a later commit.
        held = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            result = new_offset(tp) if acked else None
        finally:
            acked.extend(held)
        if result is not None and result > floor:
            return floor
        return result

    consumer._new_offset = capped_new_offset


def _stale_offsets(consumer: Any) -> defaultdict[TP, set[int]]:
    """Offsets of stale messages acknowledged by `guard_stale_acks`, per partition."""
    stale: defaultdict[TP, set[int]] | None = getattr(consumer, "_insight_stale_offsets", None)
    if stale is None:
        stale = defaultdict(set)
        consumer._insight_stale_offsets = stale
    return stale


def _lowest_pending(consumer: Any, tp: TP) -> int | None:
    offsets = [m.offset for m in list(consumer._unacked_messages) if m.tp == tp]
    committed = consumer._committed_offset.get(tp)
    acked_index = consumer._acked_index.get(tp, ())
    stale = _stale_offsets(consumer)
    if tp in stale:
        if committed is not None:
            stale[tp] = {offset for offset in stale[tp] if offset >= committed}
        offsets += [offset for offset in stale[tp] if offset not in acked_index]
        if not stale[tp]:
            del stale[tp]
    return min(offsets) if offsets else None
