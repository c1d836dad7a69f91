"""Publishing many keyed records at once: record batches built per partition, one delivery
future per batch (issue 9: a 100,000-record submit answered in a second or two).

aiokafka's `send()` costs, per record, a partitioner call (its pure-Python murmur2: about
16 us a key), an asyncio future and the accumulator's bookkeeping; for 100,000 records that
was 6 to 7 s of a 7 to 9 s submit on an idle machine (bench/README.md). Here each record's
partition is computed once with a compiled murmur2 (`key_partition`), the record is
appended to its partition's open `BatchBuilder` (aiokafka's own record-batch format,
Cython), and each full batch is handed to the producer with `send_batch()`: the broker
acknowledges (acks as the producer is configured: acks=all here) whole batches, and a batch
that fails fails the publish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from murmurhash2 import murmurhash2

# The seed of Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as in
# aiokafka.partitioner.murmur2.
KAFKA_MURMUR2_SEED = 0x9747B28C


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record: murmur2 of the key
    bytes, made positive, modulo the topic's partition count (`Utils.toPositive(
    Utils.murmur2(key)) % numPartitions` in the Java client; aiokafka's DefaultPartitioner
    computes the same). `partitions` >= 1."""
    return (murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % partitions


async def publish_keyed(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes, bytes]]
) -> int:
    """Produce `records` ((key, value) bytes, in order) to `topic` and wait until the broker
    has acknowledged every one; returns how many. Records of one partition keep their order.

    Each partition has one open batch (at most the producer's `max_batch_size` bytes, or one
    record when that record alone is larger); a full batch is queued with `send_batch()`,
    which waits while the partition already has a batch queued, so the memory held is about
    two batches per partition, whatever the number of records. Raises what the producer
    raises (a batch the broker refused, KafkaTimeoutError when no queue slot frees up within
    the producer's request timeout); the caller bounds the whole wait."""
    partitions = sorted(await producer.partitions_for(topic))
    count = len(partitions)
    open_batches: dict[int, Any] = {}
    deliveries: list[asyncio.Future[Any]] = []

    async def queue(partition: int, batch: Any) -> None:
        batch.close()  # nothing else goes into it (producer.send() could otherwise append)
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))

    sent = 0
    for key, value in records:
        partition = partitions[key_partition(key, count)]
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            # Full: queue it, and start the partition's next batch with this record (the
            # first record of a batch is always taken).
            await queue(partition, batch)
            batch = open_batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
        sent += 1
    for partition, batch in open_batches.items():
        await queue(partition, batch)
    open_batches.clear()
    await asyncio.gather(*deliveries)
    return sent
