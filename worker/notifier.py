"""The notifier: a thread in each worker's main process that delivers the outbox's due
notifications (archiver/tenants/notify.py). It takes no pool slot and no broker message, so a slow
or dead endpoint never delays an archive transfer; several workers share the outbox safely
(each claims what it delivers)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx

from archiver.errors import AppError, NotFound
from archiver.infra.db import make_engine, session_scope
from archiver.settings import Settings
from archiver.tables import Tenant, utcnow
from archiver.tenants import notify
from archiver.tenants.tenants import get_tenant_by_id
from worker import metrics

log = logging.getLogger(__name__)
IDLE_SECONDS = 1.0
PURGE_EVERY = 3600.0


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        settings = self._settings
        engine = make_engine(settings.database_url, pool_size=2, max_overflow=2)
        box = settings.secret_box()
        client = httpx.Client(timeout=settings.notify_timeout_seconds, follow_redirects=False)
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify")
        cache: dict[int, tuple[float, Tenant | None]] = {}

        def tenant(tenant_id: int) -> Tenant | None:
            hit = cache.get(tenant_id)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            with session_scope(engine) as session:
                try:
                    found: Tenant | None = get_tenant_by_id(session, tenant_id=tenant_id)
                except NotFound:
                    found = None
            cache[tenant_id] = (time.monotonic() + 10.0, found)
            return found

        def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
            return client.post(url, content=body, headers=headers)

        purged_at = 0.0
        try:
            while not self._stop.is_set():
                try:
                    outcomes = notify.deliver_due(
                        engine,
                        box=box,
                        post=post,
                        now=utcnow(),
                        base=settings.notify_retry_base_seconds,
                        horizon=timedelta(seconds=settings.notify_horizon_seconds),
                        timeout=settings.notify_timeout_seconds,
                        tenants=tenant,
                        pool=pool,
                    )
                    if time.monotonic() - purged_at > PURGE_EVERY:
                        purged_at = time.monotonic()
                        with session_scope(engine) as session:
                            notify.purge_delivered(session, now=utcnow())
                except AppError as exc:  # the database is down: try again shortly
                    log.warning("notifier: %s", exc)
                    outcomes = []
                except Exception:  # never let the thread die: it would stop every delivery
                    log.exception("notifier: unexpected error")
                    outcomes = []
                for outcome in outcomes:
                    metrics.record_notification(outcome)
                if not outcomes:
                    self._stop.wait(IDLE_SECONDS)
        finally:
            pool.shutdown(wait=False)
            client.close()
            engine.dispose()
