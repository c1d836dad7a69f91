"""The Faust app, its plain-bytes topics and its tables, built from Settings, with Faust's
repairs (stream_app.kafka.faust_fixes) installed."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TableT

from stream_app.core.settings import Settings
from stream_app.kafka.faust_fixes import (
    bound_the_fetch_wait,
    deliver_without_a_task_per_message,
    ebb_when_the_producer_buffer_drains,
    fetch_only_what_the_streams_can_take,
    fetch_these_topics_first,
    guard_stale_acks,
    guard_unacked_commits,
    hold_commits_at_skipped_offsets,
    send_without_an_event_loop_turn,
    take_several_events_per_event_loop_turn,
)
from stream_app.kafka.fetching import FETCH_MAX_WAIT_SECONDS, FETCH_MIN_BYTES
from stream_app.kafka.reassign import reassign_when_topics_were_missing
from stream_app.kafka.redelivery import heal_lost_deliveries

# Table writes queued for the producer before message delivery waits (faust_fixes).
PRODUCER_BUFFER_MESSAGES = 1000
# Most messages one fetch hands to the streams (aiokafka's max_poll_records; Faust leaves it
# unset: a fetch returns everything buffered, thousands of records of a big job). A fetch
# leaves out the partitions whose stream queue (4,096) has no room for this many
# (faust_fixes.fetch_only_what_the_streams_can_take), so the worker's one fetch loop never
# waits on a full queue with every other topic behind it.
MAX_POLL_RECORDS = 500
# How long a stream may hand its agent queued events before it gives up the event loop
# (faust_fixes.take_several_events_per_event_loop_turn; Faust: one event a turn).
STREAM_TURN_SECONDS = 0.005
# Each table partition is a RocksDB database of its own (3 tables x KAFKA_PARTITIONS). With
# Faust's defaults (64 MiB write buffers, 3 of them, a 2 GiB block cache each) a database
# keeps everything written to it in memory until 64 MiB have accumulated, and caches what
# is read up to 2 GiB, so the worker's memory grew with the size of the jobs it had
# processed (~150 MiB for 10,000 records). Small write buffers are flushed to disk early
# and the block cache is small (reads come from the OS page cache otherwise): about 3 MiB
# per database at most (two 1 MiB memtables and a 1 MiB cache), whatever the job's size;
# 72 MiB for the 24 databases of 8 partitions.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 2**20,
    "max_write_buffer_number": 2,
    "block_cache_size": 2**20,
}


def broker_urls(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


def build_app(settings: Settings, *, bootstrap_servers: str, canonical_url: str) -> faust.App:
    """The worker's Faust app: one consumer group (KAFKA_APP_ID), acks=all, the store chosen
    by BATCH_PERSISTENCE_BACKEND, standby replicas of every table (TABLE_STANDBY_REPLICAS)."""
    s = settings
    return faust.App(
        s.kafka_app_id,
        broker=broker_urls(bootstrap_servers),
        store=_store(s),
        datadir=str(s.batch_job_storage_path.resolve()),
        autodiscover=False,
        web_enabled=False,
        canonical_url=canonical_url,
        topic_partitions=s.kafka_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=s.kafka_rebalance_timeout_seconds,
        broker_session_timeout=s.kafka_session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_seconds / 3),
        producer_acks=-1,
        broker_max_poll_records=MAX_POLL_RECORDS,
        # aiokafka always puts the first record in a batch, so 1 byte means one per batch.
        # 256 KiB batches (Kafka's own default is 16 KiB): a submit publishes 10,000 records
        # in about half the time (2.0-2.2 s against 0.8-1.2 s, measured warm on 2 loaded
        # cores); outcomes are produced as they come, so linger, not size, sets their
        # latency.
        producer_max_batch_size=1 if s.kafka_one_record_per_batch else 262144,
        # The intake refuses a record larger than BATCH_MAX_RECORD_BYTES, below this.
        producer_max_request_size=s.kafka_max_request_bytes,
        # Other workers keep a standby replica of each table partition, read by the API
        # while the partition's owner is dead (api.forwarding) and replayed from where it
        # stands when a standby becomes the owner (docs: "Reads during a failover").
        table_standby_replicas=s.table_standby_replicas,
        # Stopping must not wait for records held at the closed intake gate: they stay
        # unacknowledged, so uncommitted, and are processed after the restart.
        stream_wait_empty=False,
    )


def _store(settings: Settings) -> str:
    return "memory://" if settings.batch_persistence_backend == "memory" else "rocksdb://"


def raw_topic(app: faust.App, *names: str, partitions: int) -> faust.TopicT:
    """Topics carry plain bytes: payloads are public JSON contracts, not Faust records."""
    return app.topic(*names, partitions=partitions, key_serializer="raw", value_serializer="raw")


def make_table(app: faust.App, settings: Settings, name: str) -> TableT:
    """A changelog-backed table of JSON values keyed by plain strings, with as many
    partitions as the topics (its changelog must match its source topic's count)."""
    schema: faust.Schema = faust.Schema(
        key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
    )
    # A dict of its own per table: Faust's store pops keys from the one it is given.
    storage: dict[str, Any] = (
        {"options": dict(ROCKSDB_OPTIONS)} if _store(settings) == "rocksdb://" else {}
    )
    return app.Table(
        name,
        partitions=settings.kafka_partitions,
        schema=schema,
        # A standby applies each changelog entry as it comes (Faust buffers 1000 by
        # default, which would leave a replica that far behind; its global tables use 1
        # for the same reason, faust/app/base.py GlobalTable).
        standby_buffer_size=1,
        **storage,
    )


def install_repairs(app: faust.App, settings: Settings) -> None:
    """Faust's repairs (each names its upstream report in stream_app.kafka.faust_fixes) and
    the redelivery watch, on this app."""
    s = settings
    guard_stale_acks(app)
    guard_unacked_commits(app)
    hold_commits_at_skipped_offsets(app)
    heal_lost_deliveries(
        app, (s.topic_records, s.topic_records_bulk, s.topic_jobs, s.topic_results)
    )
    deliver_without_a_task_per_message(app)
    ebb_when_the_producer_buffer_drains(app, PRODUCER_BUFFER_MESSAGES)
    send_without_an_event_loop_turn(app)
    fetch_only_what_the_streams_can_take(app, MAX_POLL_RECORDS)
    bound_the_fetch_wait(app, FETCH_MAX_WAIT_SECONDS, FETCH_MIN_BYTES)
    # Job events and outcomes are few and latency-bound; records come by the thousand.
    fetch_these_topics_first(app, (s.topic_jobs, s.topic_results))
    take_several_events_per_event_loop_turn(STREAM_TURN_SECONDS)
    reassign_when_topics_were_missing(app)
