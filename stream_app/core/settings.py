"""The one Settings object: built at the entry point from the environment (and `.env`)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PersistenceBackend = Literal["memory", "rocksdb", "sqlite"]
EmbeddedBroker = Literal["auto", "kafka", "tansu"]


# The rebalance timeout the embedded Tansu broker runs with (see kafka_rebalance_timeout_seconds).
TANSU_REBALANCE_TIMEOUT_SECONDS = 3.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # Provider budget and worker concurrency.
    claude_requests_per_minute: int = Field(50, ge=1)
    claude_input_tokens_per_minute: int | None = Field(None, ge=1)
    claude_output_tokens_per_minute: int | None = Field(None, ge=1)
    batch_max_concurrent_llm_calls: int = Field(5, ge=1, le=256)
    batch_record_retry_count: int = Field(1, ge=0, le=20)
    # Which waiting record goes next (stream_app.jobs.scheduler): fair shares per tenant, then
    # per job, weighted by priority; or fifo, the order of the batch.records partitions.
    batch_scheduling: Literal["fair", "fifo"] = "fair"
    # How far each worker reads ahead of its calls in batch.records (records, and bytes of
    # record values): the records the scheduler chooses from. Bounds the worker's memory.
    batch_lookahead_records: int = Field(2000, ge=1, le=1_000_000)
    batch_lookahead_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Jobs with more records than this are published to topic_records_bulk, the others to
    # topic_records; each worker reads both, each up to half of the look-ahead, so a small
    # job is never queued behind a big job's backlog (stream_app.kafka.record_topics).
    batch_bulk_job_records: int = Field(500, ge=1)
    batch_retry_backoff_seconds: float = Field(1.0, ge=0)
    # The provider circuit breaker (stream_app/provider/breaker.py): consecutive provider failures
    # (of two records at least) that open it, and the probe backoff while it is open.
    batch_breaker_threshold: int = Field(3, ge=2)
    batch_probe_base_seconds: float = Field(1.0, gt=0)
    batch_probe_max_seconds: float = Field(15.0, gt=0)
    # The longest wait a provider header (retry-after, ...-reset) may impose; longer is cut.
    batch_retry_after_cap_seconds: float = Field(300.0, gt=0)
    # A job with no new outcome for this long is reported as stalled in its status.
    batch_stall_after_seconds: float = Field(300.0, gt=0)
    # A worker that holds uncommitted records and does nothing with them for this long,
    # with nothing to explain it, gives up (stream_app/kafka/stall.py). Apart from the flag above
    # so that a short flag (to see stalls soon) cannot kill a worker that is only slow.
    batch_stall_exit_seconds: float = Field(300.0, gt=0)
    # An unfinished job without a new outcome this long has its counts checked against its
    # results and the outcomes on batch.results, and is repaired (stream_app.kafka.job_audit).
    batch_audit_quiet_seconds: float = Field(30.0, gt=0)
    # On SIGTERM, how long calls in flight may take to finish before the worker stops anyway.
    batch_shutdown_timeout_seconds: float = Field(30.0, ge=0)
    # A worker whose partitions stay unassigned or unrecovered this long while the broker
    # answers (or whose Faust app crashed) exits non-zero, so it is restarted.
    batch_ready_deadline_seconds: float = Field(180.0, gt=0)
    # At start, drop local table stores that claim more than their changelog holds (they
    # are rebuilt from it). Off: such a worker fails recovery and exits non-zero instead.
    batch_heal_local_state: bool = True
    claude_model: str = "claude-sonnet-5-5"
    claude_max_tokens: int = Field(1024, ge=64)
    # A reply cut off at max_tokens is retried once with this much room.
    claude_max_tokens_ceiling: int = Field(4096, ge=64)
    claude_timeout_seconds: float = Field(60.0, gt=0)
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None

    # A job's spending cap when its request names none (USD); None: no cap.
    batch_max_cost_per_job_usd: float | None = Field(None, gt=0)
    # How long a record waits for its job's `created` event before it runs with the
    # default task (records of jobs that were never announced).
    batch_job_announce_wait_seconds: float = Field(10.0, ge=0)
    # The batch lane (the provider's Message Batches API, half the price; docs/lanes.md):
    # the lane of a job that names none, and when `auto` takes the batch lane (the job's
    # projected live duration, minutes). Records of batch-lane jobs are grouped into
    # provider batches (stream_app.jobs.batch_grouping): one is cut when
    # BATCH_LANE_MAX_REQUESTS records wait, when the job's last record arrived, when none
    # joined for BATCH_LANE_WINDOW_SECONDS, or when the oldest waited
    # BATCH_LANE_MAX_WAIT_SECONDS; batches are polled every BATCH_LANE_POLL_SECONDS at
    # first (doubling up to 60 s).
    batch_default_lane: Literal["live", "batch", "auto"] = "auto"
    batch_lane_auto_minutes: float = Field(30.0, gt=0)
    batch_lane_max_requests: int = Field(1000, ge=1, le=100_000)
    batch_lane_window_seconds: float = Field(5.0, gt=0)
    batch_lane_max_wait_seconds: float = Field(60.0, gt=0)
    batch_lane_poll_seconds: float = Field(5.0, gt=0)
    # A provider batch still not ended this long past its expiry (the provider ends every
    # batch by then) is cancelled, and its unanswered requests go again.
    batch_lane_give_up_seconds: float = Field(3600.0, gt=0)
    # A spend reservation not settled, released or renewed for this long (log time of
    # batch.spend) is dropped: its worker died. Every worker must use the same value.
    batch_spend_reservation_ttl_seconds: float = Field(900.0, gt=0)
    # Cost: None means "the model's price in genai-prices" (stream_app.provider.pricing).
    batch_cost_per_1k_input_tokens: Decimal | None = None
    batch_cost_per_1k_output_tokens: Decimal | None = None

    # State.
    batch_persistence_backend: PersistenceBackend = "rocksdb"
    batch_job_storage_path: Path = Path("data/batch_jobs")
    batch_sqlite_path: Path = Path("data/batch.db")
    # Finished jobs whose last change is this many days old are deleted (as by
    # DELETE /api/v1/batch/{job_id}); None: kept until deleted by hand.
    batch_retention_days: float | None = Field(None, gt=0)
    # How long an Idempotency-Key of POST /api/v1/batch answers its first job (hours).
    batch_idempotency_hours: float = Field(24.0, gt=0)

    # Kafka.
    kafka_bootstrap_servers: str | None = None
    kafka_app_id: str = "insight-stream"
    kafka_partitions: int = Field(8, ge=1, le=256)
    topic_jobs: str = "batch.jobs"
    topic_records: str = "batch.records"
    # The records of big jobs (more than batch_bulk_job_records records).
    topic_records_bulk: str = "batch.records.bulk"
    topic_results: str = "batch.results"
    topic_dlq: str = "batch.dlq"
    # Spend reservations and settlements of capped jobs and tenant budgets, shared by the
    # cluster (stream_app.kafka.spend_log).
    topic_spend: str = "batch.spend"
    # How long the group waits for its live members to rejoin in a rebalance (their revoke
    # callback flushes the producer first). Apache Kafka completes a rebalance as soon as
    # every live member has rejoined (a dead one leaves after the session timeout), so this
    # is only an upper bound there; a member slower than it is dropped from the group while
    # it still writes (with 3 s, a loaded 2-core machine saw rebalance storms: 32 in a few
    # minutes, docs/guarantees-faults.md). Tansu answers JoinGroup only after this timeout:
    # the embedded Tansu uses 3 s (TANSU_REBALANCE_TIMEOUT_SECONDS); set it low for Tansu.
    kafka_rebalance_timeout_seconds: float = Field(30.0, gt=0)
    kafka_session_timeout_seconds: float = Field(6.0, gt=0)
    # Tansu reports a high watermark of (base offset of the last batch + 1), wrong for
    # batches of several records; Faust's table recovery then stops early or refuses to
    # start. One record per produce batch keeps it right. On by default for the embedded
    # broker; set it when KAFKA_BOOTSTRAP_SERVERS points at a Tansu broker.
    kafka_one_record_per_batch: bool = False
    # How long a submit or cancel waits for the broker to acknowledge what it produced
    # before answering 503 broker_unavailable; also bounds the producer flush at shutdown.
    kafka_publish_timeout_seconds: float = Field(30.0, gt=0)
    # The producer's largest request (Faust's producer_max_request_size, 1,000,000 bytes;
    # Kafka's broker default message.max.bytes is 1,048,588). A record travels as one
    # message, and so does its outcome (which carries the record's metadata back).
    kafka_max_request_bytes: int = Field(1_000_000, ge=65_536)
    # Copies of every table partition that other workers keep up to date from its
    # changelog (Faust standby replicas): they answer reads while the owner is dead.
    table_standby_replicas: int = Field(1, ge=0, le=16)
    # Which broker `make run` starts when KAFKA_BOOTSTRAP_SERVERS is unset: Apache Kafka
    # (durable, needs Java 17 and mvn or the cached jars), Tansu (memory only), or auto.
    embedded_broker: EmbeddedBroker = "auto"
    embedded_broker_port: int = Field(9092, ge=1, le=65535)
    embedded_kafka_data: Path = Path("data/kafka")
    embedded_kafka_cache: Path = Path.home() / ".cache" / "insight-stream" / "kafka"
    embedded_kafka_heap: str = "512m"
    simulator_port: int = Field(8090, ge=1, le=65535)

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # How other workers reach this one's API (status reads are forwarded to a job's owner).
    advertised_url: str | None = None
    api_keys: SecretStr | None = None
    # A file of `name:secret` lines (or comma-separated, as API_KEYS; `#` comments), read
    # again on SIGHUP and when it changes; used with API_KEYS (both count).
    api_keys_file: Path | None = None
    # `name:usd,...`: a tenant's (API_KEYS client name) budget per calendar month (UTC), USD.
    tenant_budgets: str | None = None
    batch_max_records_per_request: int = Field(100_000, ge=1)
    batch_max_text_chars: int = Field(100_000, ge=1)
    # A record's JSON (text, id, metadata) as it is published, in bytes: refused at intake
    # (413 record_too_large) above this. Half of KAFKA_MAX_REQUEST_BYTES by default, so the
    # record's outcome (its answer plus the record's metadata) fits in a message too.
    batch_max_record_bytes: int = Field(500_000, ge=1024)
    # A JSON body is parsed whole in memory (a few times its size as Python objects); larger
    # jobs go as NDJSON or CSV, which are read line by line into a spool file.
    batch_max_json_body_bytes: int = Field(32 * 2**20, ge=1)
    log_level: str = "INFO"
    # json: one JSON object a line; text: for people; auto: JSON unless stderr is a terminal.
    log_format: Literal["auto", "json", "text"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        # `FOO=` in a .env file or compose's `${FOO:-}` means "not set": the default applies,
        # for every setting alike.
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}

    @field_validator("api_keys")
    @classmethod
    def _api_keys_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked at start-up, not when the API is built: a bad value stops the launcher
        # before it starts anything (exit 2). The message never holds the value.
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @field_validator("tenant_budgets")
    @classmethod
    def _tenant_budgets_well_formed(cls, value: str | None) -> str | None:
        if value is not None:
            parse_tenant_budgets(value)
        return value

    @field_validator("batch_persistence_backend", mode="before")
    @classmethod
    def _file_is_rocksdb(cls, value: object) -> object:
        # "file" is the original service's name for the on-disk backend.
        return "rocksdb" if value == "file" else value

    def tenant_budget_table(self) -> dict[str, Decimal]:
        """tenant -> USD a calendar month, from `TENANT_BUDGETS=name:usd,...`."""
        return parse_tenant_budgets(self.tenant_budgets) if self.tenant_budgets else {}

    def api_key_table(self) -> dict[str, str]:
        """secret -> client name, from `API_KEYS=name:secret,...`; empty means open."""
        if self.api_keys is None:
            return {}
        return parse_api_keys(self.api_keys.get_secret_value())


def parse_api_keys(raw: str) -> dict[str, str]:
    """secret -> client name. Raises ValueError (without the value) when an item is not
    `name:secret`."""
    table: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, secret = item.partition(":")
        if not sep or not name or not secret:
            raise ValueError("API_KEYS must look like name:secret,name2:secret2")
        table[secret] = name
    return table


def parse_tenant_budgets(raw: str) -> dict[str, Decimal]:
    """tenant -> USD. Raises ValueError when an item is not `name:usd` with usd >= 0."""
    table: dict[str, Decimal] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, amount = item.partition(":")
        try:
            usd = Decimal(amount.strip())
        except ArithmeticError:
            usd = Decimal(-1)
        if not sep or not name.strip() or not usd.is_finite() or usd < 0:
            raise ValueError("TENANT_BUDGETS must look like alpha:500,beta:50 (USD a month)")
        table[name.strip()] = usd
    return table
