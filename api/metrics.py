"""GET /metrics: this worker's counters (stream_app.core.metrics) and its state, read at scrape
time: budget share, consumer lag per partition, jobs by state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from stream_app.running.service import Service

JOB_STATES = ("pending", "running", "completed", "cancelled", "failed", "budget_exhausted")


class ServiceState(Collector):
    """Gauges computed from the running service on every scrape."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        service = self._service
        budget = service.budget
        yield GaugeMetricFamily(
            "insight_budget_share",
            "This worker's share of the cluster's provider budget "
            "(owned batch.records partitions / all).",
            value=budget.share,
        )
        yield GaugeMetricFamily(
            "insight_budget_requests_per_minute",
            "The cluster-wide request limit in force (configured, or the provider's if lower).",
            value=budget.requests_per_minute,
        )
        jobs = GaugeMetricFamily(
            "insight_jobs",
            "Jobs whose status this worker holds, by state.",
            labels=["state"],
        )
        by_state: Counter[str] = Counter(job.status for job in service.pipeline.jobs())
        for state in sorted(set(JOB_STATES) | set(by_state)):
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "insight_cancelled_jobs_known",
            "Cancelled jobs this worker knows of (their queued records are skipped).",
            value=len(service.pipeline.cancelled),
        )
        yield from self._tenants()
        yield self._lag()

    def _tenants(self) -> Iterator[GaugeMetricFamily]:
        rules = self._service.rules
        budget = GaugeMetricFamily(
            "insight_tenant_budget_usd",
            "A tenant's budget for the calendar month (TENANT_BUDGETS), USD.",
            labels=["tenant"],
        )
        spent = GaugeMetricFamily(
            "insight_tenant_spent_usd",
            "What a tenant's jobs billed this calendar month (UTC), USD, from batch.spend.",
            labels=["tenant"],
        )
        exhausted = GaugeMetricFamily(
            "insight_tenant_budget_exhausted",
            "1 when a tenant's monthly budget is spent (its new jobs are refused with 402).",
            labels=["tenant"],
        )
        for tenant, usd in sorted(rules.tenant_budgets.items()):
            budget.add_metric([tenant], float(usd))
            spent.add_metric([tenant], float(rules.tenant_spent(tenant)))
            exhausted.add_metric([tenant], 1.0 if rules.tenant_exhausted(tenant) else 0.0)
        yield budget
        yield spent
        yield exhausted

    def _lag(self) -> GaugeMetricFamily:
        lag = GaugeMetricFamily(
            "insight_consumer_lag",
            "Messages not yet committed by this worker's consumer, per assigned partition "
            "(high watermark - committed offset).",
            labels=["topic", "partition"],
        )
        settings = self._service.settings
        topics = {
            settings.topic_records,
            settings.topic_records_bulk,
            settings.topic_jobs,
            settings.topic_results,
        }
        consumer: Any = self._service.pipeline.app.consumer
        try:
            assignment = consumer.assignment()
        except Exception:  # not started, or between assignments: nothing to report
            return lag
        for tp in sorted(assignment):
            if tp.topic not in topics:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched from yet
                highwater = None
            if highwater is None:
                continue
            # Faust keeps the committed offsets it knows (the next offset to read).
            committed = consumer._committed_offset.get(tp) or 0
            lag.add_metric([tp.topic, str(tp.partition)], max(0, highwater - committed))
        return lag


def install(service: Service) -> None:
    """Add the scrape-time gauges to the service's registry (once, at start)."""
    service.pipeline.metrics.registry.register(ServiceState(service))


async def metrics(request: Request) -> Response:
    """Prometheus text format (version 0.0.4). Open like /health: it names no job and no
    secret. Counters count what this worker did since it started; sum them over workers."""
    service: Service = request.state.service
    body = generate_latest(service.pipeline.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
