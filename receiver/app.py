"""The web process: ``uvicorn receiver.app:create_app --factory``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from archiver.errors import Unavailable
from archiver.infra import migrate, tracing
from archiver.infra.broker import make_celery, queue_depth
from archiver.infra.buckets import TenantS3Clients
from archiver.infra.db import first_line, make_engine
from archiver.infra.logs import configure_logging
from archiver.media.shapes import Health, Readiness
from archiver.settings import Settings, settings_for_process
from receiver import api, resources, webhooks
from receiver.answers import ShapeResponse, error
from receiver.group_commit import GroupCommit
from receiver.intake import Intake
from receiver.metrics import HttpMetrics, ReceiverMetrics
from receiver.openapi import docs_page, openapi_json
from receiver.publisher import Publisher
from receiver.resources import Resources
from receiver.tenant_cache import TenantCache
from receiver.ui.dashboard import Dashboard
from receiver.webhooks import receive_webhook
from receiver.writers import writer_for

log = logging.getLogger(__name__)


async def healthz(_: Request) -> Response:
    """The process is up (liveness): no dependency is checked."""
    return ShapeResponse(Health(status="ok"))


async def readyz(request: Request) -> Response:
    """Ready to accept webhooks: the database and the broker both answer (readiness)."""
    res = resources.of(request)
    problems = await run_in_threadpool(_dependencies, res.engine, res.celery)
    ready = not any(problems.values())
    for name, reason in problems.items():
        if reason:
            log.warning("not ready: %s: %s", name, reason)
    return ShapeResponse(
        Readiness(
            status="ready" if ready else "unavailable",
            checks={k: "down" if v else "ok" for k, v in problems.items()},
            reasons={k: v for k, v in problems.items() if v},
        ),
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": str(res.settings.retry_after_seconds)},
    )


def _dependencies(engine: Engine, celery: Celery) -> dict[str, str | None]:
    """Each dependency's problem (None: it answers), with its cause: a readiness probe that
    only says "down" leaves the operator guessing between unreachable and unmigrated."""
    problems: dict[str, str | None] = {}
    try:
        problems["database"] = migrate.schema_problem(engine)
    except SQLAlchemyError as exc:
        problems["database"] = f"unreachable: {first_line(exc)}"
    try:
        queue_depth(celery)
        problems["broker"] = None
    except Unavailable as exc:
        problems["broker"] = f"unreachable: {exc.__cause__ or exc}"
    return problems


async def metrics_endpoint(request: Request) -> Response:
    return await resources.of(request).metrics.endpoint(request)


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request not served: %s", exc)
    after = resources.of(request).settings.retry_after_seconds
    return error(503, "temporarily unavailable, retry later", {"Retry-After": str(after)})


async def http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return error(exc.status_code, message, exc.headers)


async def server_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error(500, "internal error")


class Receiver(Starlette):
    """The web app, with webhooks answered before its middleware and router (see
    receiver/webhooks.py): the hot path. With tracing on, or before the lifespan has built
    what they need, webhooks go the long way, through the route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = webhooks.tenant_of(scope)
        if tenant is not None and not tracing.enabled():
            served = getattr(self.state, "resources", None)
            if isinstance(served, Resources):
                scope["app"] = self
                await webhooks.serve(served, tenant, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or settings_for_process("web")
    configure_logging(settings.log_level, settings.log_format)
    tracing.setup("titan-archiver-receiver")
    dashboard = Dashboard(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        celery = make_celery(settings)
        box = settings.secret_box()
        publisher = Publisher(celery, settings.broker_url)
        writer = writer_for(engine, publisher=publisher, large_bytes=settings.large_media_bytes)
        commit = GroupCommit(writer=writer, flushes=8)
        commit.start()
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            celery=celery,
            s3=TenantS3Clients(settings=settings, box=box),
            metrics=ReceiverMetrics(
                engine,
                celery,
                token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
            ),
            intake=Intake(
                tenants=TenantCache(engine=engine, box=box),
                commit=commit,
                retry_after=settings.retry_after_seconds,
                engine=engine,
            ),
        )
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # garbage collector's scans (full collections were the ingest's latency tail).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await commit.stop()
            await writer.close()
            await publisher.aclose()
            engine.dispose()

    return Receiver(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/webhooks/{tenant}", receive_webhook, methods=["POST"]),
            Route("/api/media", api.list_media),
            # Media ids are opaque and may hold "/": match them as paths.
            Route("/api/media/{id:path}/content", api.content),
            Route("/api/media/{id:path}/thumbnail", api.thumbnail),
            Route("/api/media/{id:path}", api.get_media),
            Route("/api/stats", api.stats),
            Route("/api/admin/erase", api.erase, methods=["POST"]),
            Route("/api/admin/audit", api.audit_list),
            Route("/api/admin/export-bundle", api.export_bundle, methods=["POST"]),
            Route("/api/admin/export-bundle/{job}", api.export_status),
            Route("/openapi.json", openapi_json),
            Route("/docs", docs_page),
            *dashboard.routes(),
        ],
        lifespan=lifespan,
        middleware=[Middleware(HttpMetrics)],
        exception_handlers={
            HTTPException: http_error,
            Unavailable: unavailable,
            Exception: server_error,
        },
    )
