"""The submit's partitioner (stream_app.kafka.bulk_publish.key_partition) is Kafka's default one:
the partition a record lands on is part of the Kafka contract (README "Topics"), and
downstream tools (and tests/support.partition_of) compute it with aiokafka's murmur2."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner

from stream_app.kafka.bulk_publish import key_partition
from stream_app.kafka.pipeline import record_key


def aiokafka_partition(key: bytes, partitions: int) -> int:
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


def test_record_keys_of_every_length_land_where_kafkas_default_partitioner_puts_them() -> None:
    rng = random.Random(9)
    for _ in range(20):
        job_id = uuid.UUID(int=rng.getrandbits(128)).hex
        # Indexes of 1 to 7 digits: every key length (and every length modulo 4) a job has.
        indexes = [*range(12), *(rng.randrange(10 ** (d - 1), 10**d) for d in range(2, 8))]
        for index in indexes:
            key = record_key(job_id, index)
            for partitions in (1, 3, 4, 8, 12, 256):
                assert key_partition(key, partitions) == aiokafka_partition(key, partitions), (
                    key,
                    partitions,
                )


def test_any_key_bytes_hash_as_kafka_does() -> None:
    rng = random.Random(13)
    keys = [b"", b"a", b"ab", b"abc", b"\xff" * 9] + [
        rng.randbytes(rng.randrange(0, 64)) for _ in range(2000)
    ]
    for key in keys:
        assert key_partition(key, 8) == aiokafka_partition(key, 8), key
