"""Prometheus gauges read at scrape time from the shared state: rows by status, oldest
unarchived age, and the broker's queue depths.

Every receiver and worker reports the same values (they read the same database and
broker), so aggregate these with max(), not sum(); the counters are per process.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from celery import Celery
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from archiver.errors import Unavailable
from archiver.infra.broker import queue_depths
from archiver.infra.db import session_scope
from archiver.reporting import figures
from archiver.scheduling import pauses
from archiver.tables import Status, utcnow
from archiver.tenants import notify
from archiver.tenants.tenants import list_tenants

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BacklogCollector(Collector):
    def __init__(self, engine: Engine, celery: Celery | None = None) -> None:
        self._engine = engine
        self._celery = celery

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._rows()
        yield from self._queues()

    def _rows(self) -> Iterator[GaugeMetricFamily]:
        try:
            with session_scope(self._engine) as session:
                backlog = figures.backlog(session)
                found_paused = pauses.paused(session)
                found_sessions = pauses.paused_sessions(session)
                outbox = notify.counts(session)
                names = {str(t.id): t.name for t in list_tenants(session)}
        except Unavailable:
            log.warning("metrics: database unavailable, backlog gauges omitted")
            return
        rows = GaugeMetricFamily("archiver_media_rows", "Media rows by status", labels=["status"])
        for status in Status:
            rows.add_metric([status.value], backlog.counts.get(status.value, 0))
        yield rows
        held = GaugeMetricFamily(
            "archiver_tenant_paused",
            "1 for each paused tenant: its media waits until the tenant is fixed and resumed",
            labels=["tenant", "reason"],
        )
        for paused in found_paused:
            kind = (
                "titan"
                if paused.reason.startswith("titan")
                else "bucket"
                if paused.reason.startswith("bucket")
                else "operator"
            )
            held.add_metric([paused.tenant, kind], 1)
        yield held
        sessions = GaugeMetricFamily(
            "archiver_session_paused",
            "1 for each session Titan reported logged out or banned: its media waits for it",
            labels=["tenant", "session"],
        )
        for found in found_sessions:
            sessions.add_metric([found.tenant, found.session], 1)
        yield sessions
        waiting = GaugeMetricFamily(
            "archiver_notifications",
            "Notifications not delivered: pending (being retried) or failed (given up)",
            labels=["tenant", "state"],
        )
        for tid, states in outbox.items():
            for state, n in states.items():
                waiting.add_metric([names.get(tid, tid), state], n)
        yield waiting
        oldest = backlog.oldest_unarchived
        yield GaugeMetricFamily(
            "archiver_oldest_unarchived_age_seconds",
            "Age of the oldest media row not yet archived or failed (WhatsApp expires media ~14 d)",
            value=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        )

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        if self._celery is None:
            return
        up = GaugeMetricFamily(
            "archiver_broker_up", "1 when the broker answered this scrape, 0 when unreachable"
        )
        try:
            depths = queue_depths(self._celery)
        except Unavailable as exc:
            log.warning("metrics: %s; queue depth omitted", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        gauge = GaugeMetricFamily(
            "archiver_queue_depth", "Archive tasks waiting in the broker", labels=["queue"]
        )
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        yield gauge


class BuildInfo(Collector):
    """``archiver_build_info{version, component}`` 1: which release each process runs, and
    (its absence) that no process of a component is up."""

    def __init__(self, component: str) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            self._version = version("titan-archiver")
        except PackageNotFoundError:  # run from a source tree that was never installed
            self._version = "unknown"
        self._component = component

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "archiver_build_info",
            "1 for each process: its version and component (receiver, worker)",
            labels=["version", "component"],
        )
        info.add_metric([self._version, self._component], 1)
        yield info


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an Authorization header satisfies the metrics token (always, when none is set)."""
    if token is None:
        return True
    return hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())
