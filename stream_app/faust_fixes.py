"""Workarounds for faust-streaming 0.15.3 defects that break a guarantee of ours. Each
names the upstream report; remove it when the fix is released."""

from __future__ import annotations

from typing import Any

import faust
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

    def ack(message: Message) -> bool:
        if message.generation_id != app.consumer_generation_id:
            message.acked = True
            consumer._unacked_messages.discard(message)
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
