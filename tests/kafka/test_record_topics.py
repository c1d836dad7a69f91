"""Which record topic a job goes to (stream_app.kafka.record_topics)."""

from __future__ import annotations

from stream_app.core.settings import Settings
from stream_app.kafka.record_topics import record_topics, topic_for_job


def test_big_jobs_go_to_the_bulk_topic_and_the_rest_to_batch_records() -> None:
    settings = Settings(batch_bulk_job_records=500)
    assert record_topics(settings) == ("batch.records", "batch.records.bulk")
    assert topic_for_job(settings, 1) == "batch.records"
    assert topic_for_job(settings, 500) == "batch.records"
    assert topic_for_job(settings, 501) == "batch.records.bulk"
    assert topic_for_job(settings, 100_000) == "batch.records.bulk"


def test_the_topic_names_are_settings() -> None:
    settings = Settings(topic_records="in.small", topic_records_bulk="in.big")
    assert record_topics(settings) == ("in.small", "in.big")
    assert topic_for_job(settings, 10**6) == "in.big"


def test_fifo_keeps_one_queue_in_publication_order() -> None:
    settings = Settings(batch_scheduling="fifo", batch_bulk_job_records=500)
    assert topic_for_job(settings, 100_000) == "batch.records"
