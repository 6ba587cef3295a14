"""Prometheus metrics of the web process: webhook outcomes and latency, and the archive's backlog.

The counters are this process's; the backlog gauges (archiver.backlog_metrics) are read
from the database and broker at scrape time. With ARCHIVER_METRICS_TOKEN set, a scrape
must send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from celery import Celery
from opentelemetry.trace import Span
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archiver.infra import tracing
from archiver.infra.logs import request_id
from archiver.reporting.backlog_metrics import CONTENT_TYPE, BacklogCollector, BuildInfo, authorized

log = logging.getLogger(__name__)


class ReceiverMetrics:
    """One registry per app instance, so tests and several apps in one process stay apart."""

    def __init__(self, engine: Engine, celery: Celery, *, token: str | None = None) -> None:
        self._token = token
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "archiver_webhooks_total",
            "Webhook deliveries by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._outcomes: dict[str, Counter] = {}
        self.not_captured = Counter(
            "archiver_media_not_captured_total",
            "Media deliveries the tenant's capture policy leaves out, by reason",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.accept_seconds = Histogram(
            "archiver_webhook_accept_seconds",
            "Time to answer a webhook delivery",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.http_requests = Counter(
            "archiver_http_requests_total",
            "Requests to the query API and the dashboard (webhooks: archiver_webhooks_total)",
            ["handler", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "archiver_http_request_seconds",
            "Time to answer a query API or dashboard request",
            ["handler"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(BacklogCollector(engine, celery))
        self.registry.register(BuildInfo("receiver"))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def outcome(self, name: str) -> Counter:
        """``webhooks.labels(name)``, looked up once per outcome (prometheus_client checks
        and locks on every ``labels`` call: two thirds of counting a webhook)."""
        child = self._outcomes.get(name)
        if child is None:
            child = self._outcomes[name] = self.webhooks.labels(name)
        return child

    async def endpoint(self, request: Request) -> Response:
        if not authorized(request.headers.get("authorization"), self._token):
            log.warning("metrics: scrape refused, missing or wrong token")
            return JSONResponse(
                {"error": "unauthorized", "message": "metrics need the bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await run_in_threadpool(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE)


_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Request ids made here: this process's random prefix and a counter (no syscall per request).
_ID_PREFIX = secrets.token_hex(4)
_ids = itertools.count(1)


def request_id_of(scope: Scope) -> bytes:
    """The caller's ``X-Request-ID`` when it is a plain token, else a new one."""
    return request_id_for(next((v for k, v in scope["headers"] if k == b"x-request-id"), None))


def request_id_for(given: bytes | None) -> bytes:
    """``given`` (an ``X-Request-ID`` header's value) when it is a plain token, else a new id."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}-{next(_ids):x}".encode()


def _server_span(scope: Scope, rid: bytes) -> Span | None:
    parent = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
    return tracing.start(
        scope.get("method", "HTTP"),
        kind=tracing.SERVER,
        parent=parent.decode("latin-1") if parent is not None else None,
        attributes={
            "http.request.method": scope.get("method", ""),
            "url.path": scope["path"],
            "archiver.request_id": rid.decode(),
        },
    )


access_log = logging.getLogger("receiver.access")


def _access_line(scope: Scope, method: str, status: int, seconds: float) -> None:
    """One line per API, dashboard, probe or metrics request (a webhook's own line says its
    outcome): what uvicorn's access log said, as JSON with the request id and duration, so
    the Procfile runs uvicorn with --no-access-log."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = scope["path"]
    query = scope.get("query_string", b"")
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    client = scope.get("client")
    access_log.info(
        "%s %s %d",
        method,
        path,
        status,
        extra={
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": method,
            "path": path,
            "status": status,
            "durationMs": round(seconds * 1000, 2),
        },
    )


class HttpMetrics:
    """ASGI middleware: every request gets a request id (the caller's ``X-Request-ID`` when
    it is a plain token, else a new one), carried by each log line written while serving it
    and echoed in the answer's ``X-Request-ID``. The API's and the dashboard's requests are
    also counted and timed by handler (the route's endpoint name: a bounded label); webhooks
    have their own counters."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        token = request_id.set(rid.decode())
        status = 500
        # With tracing on, a server span per request (the caller's traceparent, if any, is
        # its parent): the root of a webhook's trace.
        opened = _server_span(scope, rid) if tracing.enabled() else None

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        started = time.perf_counter()
        try:
            with tracing.use(opened):
                try:
                    await self.app(scope, receive, tagged)
                finally:
                    self._served(scope, status, time.perf_counter() - started)
        finally:
            request_id.reset(token)
            if opened is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                opened.update_name(f"{scope.get('method', '')} {route}")
                tracing.end(
                    opened,
                    error=f"HTTP {status}" if status >= 500 else None,
                    attributes={"http.route": route, "http.response.status_code": status},
                )

    def _served(self, scope: Scope, status: int, seconds: float) -> None:
        """Count, time and log one answered request (within its request id)."""
        method = scope.get("method", "")
        if scope["path"].startswith("/webhooks/"):
            # A webhook has its own counters and outcome line (receiver/webhooks.py); one
            # that no webhook route answered gets an access line here.
            if status in (404, 405):
                _access_line(scope, method, status, seconds)
            return
        served = getattr(scope["app"].state, "resources", None)  # None before start-up
        metrics = getattr(served, "metrics", None)
        if isinstance(metrics, ReceiverMetrics):
            endpoint = scope.get("endpoint")
            handler = getattr(endpoint, "__name__", None) or (
                "static" if scope["path"].startswith("/ui/static/") else "unmatched"
            )
            metrics.http_requests.labels(handler, method, str(status)).inc()
            metrics.http_seconds.labels(handler).observe(seconds)
        _access_line(scope, method, status, seconds)
