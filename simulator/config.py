"""Runtime knobs of the simulator; every field can be changed live via POST /_sim/config."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SimulatorConfig(BaseModel):
    """Limits, latency and failure injection applied to /v1/messages.

    ``None`` for a limit means unlimited. Unknown fields are rejected so a typo in a
    test's ``configure(...)`` call fails loudly instead of silently doing nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, ge=1)
    input_tokens_per_minute: int | None = Field(default=None, ge=1)
    output_tokens_per_minute: int | None = Field(default=None, ge=1)
    # When set (with requests_per_minute), requests are also limited over any window of
    # this many seconds, to that window's share of the minute: ceil(rpm * seconds / 60)
    # (providers check a per-minute limit over shorter intervals too; 5 s is typical).
    requests_short_window_seconds: float | None = Field(default=None, gt=0, le=60)
    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None
    # Every /v1/messages call is answered with this error status while set: 529 is an
    # outage ("overloaded"), 500/503 a broken provider, 403 a key without permission, 400
    # (with a parameter-shaped force_message) a request the API no longer accepts.
    force_status: int | None = Field(default=None, ge=400, le=599)
    force_message: str | None = None
    # When set, only these API keys are accepted (x-api-key or bearer); others get 401.
    api_keys: list[str] | None = None
    # When set, only these models exist; others get 404 not_found_error.
    models: list[str] | None = None
    # Prompt caching: a prefix marked cache_control (system blocks up to the last marked one,
    # with the tools and output schema) of at least this many tokens is written to the
    # cache on first use and read from it for `cache_ttl_seconds` after its last use.
    cache_min_tokens: int = Field(default=1024, ge=1)
    cache_ttl_seconds: float = Field(default=300.0, gt=0)
    # Message batches (simulator/batches.py): how long a batch takes, its expiry, batches
    # that stall until expiry, the 404 of a retrieve/results this soon after the create,
    # and how long a create's answer is held back after the batch was accepted.
    batch_processing_seconds: float = Field(default=2.0, ge=0)
    # How many batches are processed at once (None: all); later ones queue behind them.
    batch_concurrency: int | None = Field(default=None, ge=1)
    batch_expiry_seconds: float = Field(default=86_400.0, gt=0)
    batch_stall: bool = False
    # With batch_stall: the stalled batches do not even end at their expiry (a provider
    # fault: only a cancel ends them).
    batch_stall_past_expiry: bool = False
    batch_not_found_seconds: float = Field(default=0.0, ge=0)
    batch_create_delay_ms: float = Field(default=0.0, ge=0)

    def updated(self, patch: dict[str, Any]) -> SimulatorConfig:
        """A validated copy with ``patch`` applied (``model_copy`` would skip validation)."""
        return SimulatorConfig.model_validate({**self.model_dump(), **patch})
