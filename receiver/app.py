"""The web process: ``uvicorn receiver.app:create_app --factory``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from archiver.db import make_engine
from archiver.errors import Unavailable
from archiver.logs import configure_logging
from archiver.publisher import Publisher
from archiver.queue import make_celery
from archiver.settings import Settings, load_settings
from receiver import api
from receiver.dashboard import Dashboard, ui_routes
from receiver.group_commit import GroupCommit
from receiver.intake import Intake
from receiver.metrics import ReceiverMetrics
from receiver.openapi import docs_page, openapi_json
from receiver.tenant_cache import TenantCache
from receiver.tenant_clients import TenantClients
from receiver.webhooks import receive_webhook
from receiver.writers import PostgresWriter, ThreadedWriter, Writer

log = logging.getLogger(__name__)


async def healthz(_: Request) -> Response:
    """The process is up (liveness): no dependency is checked."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to accept webhooks: the database and the broker both answer (readiness)."""
    checks = await run_in_threadpool(
        _dependencies, request.app.state.engine, request.app.state.celery
    )
    ready = all(checks.values())
    return JSONResponse(
        {
            "status": "ready" if ready else "unavailable",
            "checks": {k: "ok" if v else "down" for k, v in checks.items()},
        },
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )


def _dependencies(engine: Any, celery: Any) -> dict[str, bool]:
    from sqlalchemy import text

    from archiver.redrive import queue_depth

    results = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        results["database"] = True
    except Exception:
        results["database"] = False
    try:
        queue_depth(celery)
        results["broker"] = True
    except Exception:
        results["broker"] = False
    return results


def _delegate(name: str) -> Any:
    """A route handler that calls the app's MediaApi built in lifespan."""

    async def handler(request: Request) -> Response:
        return await getattr(request.app.state.api, name)(request)  # type: ignore[no-any-return]

    handler.__name__ = name
    return handler


async def metrics_endpoint(request: Request) -> Response:
    metrics: ReceiverMetrics = request.app.state.metrics
    return await metrics.endpoint(request)


async def unavailable(_: Request, exc: Exception) -> Response:
    log.warning("request not served: %s", exc)
    return JSONResponse(
        {"error": "temporarily unavailable, retry later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def server_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        celery = make_celery(settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.celery = celery
        app.state.metrics = ReceiverMetrics(
            engine,
            celery,
            token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
        )
        box = settings.secret_box()
        clients = TenantClients(settings=settings, box=box)
        app.state.api = api.MediaApi(
            engine=engine,
            admin_key=settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
            clients=clients,
            presign_ttl=settings.presign_ttl_seconds,
        )
        app.state.dashboard = Dashboard(
            engine=engine, settings=settings, celery=celery, clients=clients
        )
        publisher = Publisher(celery, settings.broker_url)
        writer: Writer
        if engine.dialect.name == "postgresql":
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            writer = PostgresWriter(
                conninfo=conninfo,
                publisher=publisher,
                connections=8,
                large_bytes=settings.large_media_bytes,
            )
        else:
            writer = ThreadedWriter(
                engine=engine, publisher=publisher, large_bytes=settings.large_media_bytes
            )
        commit = GroupCommit(writer=writer, flushes=8)
        commit.start()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # garbage collector's scans (full collections were the ingest's latency tail).
        gc.collect()
        gc.freeze()
        app.state.intake = Intake(
            tenants=TenantCache(engine=engine, box=box),
            commit=commit,
            retry_after=settings.retry_after_seconds,
        )
        try:
            yield
        finally:
            await commit.stop()
            await writer.close()
            await publisher.aclose()
            engine.dispose()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/webhooks/{tenant}", receive_webhook, methods=["POST"]),
            Route("/api/media", _delegate("list_media")),
            # Media ids are opaque and may hold "/": match them as paths.
            Route("/api/media/{id:path}/content", _delegate("content")),
            Route("/api/media/{id:path}", _delegate("get_media")),
            Route("/api/stats", _delegate("stats")),
            Route("/openapi.json", openapi_json),
            Route("/docs", docs_page),
            *ui_routes(),
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            Unavailable: unavailable,
            Exception: server_error,
        },
    )
