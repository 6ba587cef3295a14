"""Prometheus metrics of the web process: webhook outcomes and latency, and the archive's backlog.

Backlog figures (rows by status, oldest unarchived age) come from the database at scrape
time, so every replica reports the same values; aggregate them with max(), not sum().
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from archiver import media
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.tables import Status, utcnow

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BacklogCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with session_scope(self._engine) as session:
                backlog = media.backlog(session)
        except Unavailable:
            log.warning("metrics: database unavailable, backlog gauges omitted")
            return
        rows = GaugeMetricFamily("archiver_media_rows", "Media rows by status", labels=["status"])
        for status in Status:
            rows.add_metric([status.value], backlog.counts.get(status.value, 0))
        yield rows
        oldest = backlog.oldest_unarchived
        yield GaugeMetricFamily(
            "archiver_oldest_unarchived_age_seconds",
            "Age of the oldest media row not yet archived or failed (WhatsApp expires media ~14 d)",
            value=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        )


class ReceiverMetrics:
    """One registry per app instance, so tests and several apps in one process stay apart."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "archiver_webhooks_total",
            "Webhook deliveries by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.accept_seconds = Histogram(
            "archiver_webhook_accept_seconds",
            "Time to answer a webhook delivery",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.registry.register(BacklogCollector(engine))

    async def endpoint(self, _: Request) -> Response:
        body = await run_in_threadpool(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE)
