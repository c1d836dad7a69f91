"""What this worker did, counted for Prometheus (served on GET /metrics by the API).

Counters count this worker's own work: each outcome it produced (a redelivered record
whose outcome was already known is not counted again), each call it sent. Summed over the
workers they equal the jobs' numbers. Labels carry no secret and no record text.
"""

from __future__ import annotations

import time
from decimal import Decimal

import httpx2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas import ResultEvent

# Provider calls take from ~0.1 s (short texts) to a minute (CLAUDE_TIMEOUT_SECONDS).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# A slot of the rate budget comes every 60/rpm seconds per cluster; waits after a 429 last
# up to retry-after.
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class WorkerMetrics:
    """The instruments, on a registry of their own (not the process-wide default)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(
            "insight_records",
            "Records that got their outcome on this worker, by outcome "
            "(succeeded, failed, skipped because the job was cancelled).",
            ["outcome"],
            registry=r,
        )
        self.records_retried = Counter(
            "insight_records_retried",
            "Records that needed more than one provider call (retries, calls after a 429).",
            registry=r,
        )
        self.retry_calls = Counter(
            "insight_record_retry_calls",
            "Provider calls beyond each record's first.",
            registry=r,
        )
        self.provider_calls = Counter(
            "insight_provider_calls",
            "Calls to the provider's Messages API by HTTP status code "
            "('error' when no answer came: timeout, connection refused).",
            ["status"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "insight_llm_latency_seconds",
            "Seconds from sending a provider call to its answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limit_wait = Histogram(
            "insight_rate_limit_wait_seconds",
            "Seconds a provider call waited for its slot of the rate budget.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "insight_tokens",
            "Billed tokens of the outcomes produced on this worker, by kind "
            "(input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens).",
            ["kind"],
            registry=r,
        )
        self.cost = Counter(
            "insight_cost_usd",
            "Estimated cost in USD of the billed tokens of the outcomes produced on this worker.",
            registry=r,
        )
        self.calls_in_flight = Gauge(
            "insight_provider_calls_in_flight",
            "Provider calls sent and not answered yet, on this worker.",
            registry=r,
        )
        # The labelled children, looked up once (`labels()` validates and locks at each
        # call; these are counted for every record).
        self._records_by = {
            outcome: self.records.labels(outcome) for outcome in ("succeeded", "failed", "skipped")
        }
        self._tokens_by = {kind: self.tokens.labels(kind) for kind in _TOKEN_KINDS}
        self._calls_by: dict[str, Counter] = {}

    def provider_call(self, status: str) -> None:
        """One Messages API call ended: its HTTP status code, or "error" without an answer."""
        child = self._calls_by.get(status)
        if child is None:
            child = self._calls_by[status] = self.provider_calls.labels(status)
        child.inc()

    def outcome(self, result: ResultEvent, cost: Decimal) -> None:
        """A record got its outcome here (once per record; not for re-sent known outcomes)."""
        kind = "skipped" if result.skipped else "succeeded" if result.success else "failed"
        self._records_by[kind].inc()
        if result.attempts > 1:
            self.records_retried.inc()
            self.retry_calls.inc(result.attempts - 1)
        for name in _TOKEN_KINDS:
            # Cache token fields exist once the provider reports them.
            count = getattr(result, name, 0)
            if count:
                self._tokens_by[name].inc(count)
        if cost:
            self.cost.inc(float(cost))

    def waited_for_budget(self, seconds: float) -> None:
        self.rate_limit_wait.observe(seconds)


class MeteredTransport(httpx2.AsyncBaseTransport):
    """The provider client's transport: counts calls by status code, times them, and keeps
    the number in flight. Only the Messages API is counted (not token counting)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, metrics: WorkerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/v1/messages"):
            return await self._inner.handle_async_request(request)
        metrics = self._metrics
        metrics.calls_in_flight.inc()
        started = time.monotonic()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            metrics.provider_call("error")
            raise
        finally:
            metrics.calls_in_flight.dec()
        metrics.llm_latency.observe(time.monotonic() - started)
        metrics.provider_call(str(response.status_code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
