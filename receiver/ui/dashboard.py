"""The web dashboard under /ui: overview, chats, media browser, media detail, failures and
retries, and the audit trail (admin).

Server-rendered HTML (Jinja2, autoescaped) with one small script. Signed in with a tenant
API key (that tenant only) or the admin key (every tenant). Media bytes are never proxied:
previews and downloads redirect to a fresh, short-lived presigned URL of the tenant's
bucket. Retrying runs the same code as ``titan-archiver media retry``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from archiver.ages import CRITICAL_AGE, WARN_AGE, WHATSAPP_KEEPS
from archiver.errors import NotFound, PayloadError
from archiver.governance import audit
from archiver.infra.db import session_scope
from archiver.media import query as queries
from archiver.media import renditions
from archiver.media.query import encode_cursor, parse_query
from archiver.media.shapes import media_info
from archiver.names import MEDIA_TYPES
from archiver.reporting import figures
from archiver.scheduling import pauses
from archiver.scheduling.dispatch import retry_failed
from archiver.settings import Settings
from archiver.tables import Media, Status, Tenant, utcnow
from archiver.tenants.tenants import get_tenant_by_id, list_tenants
from receiver import redirects, resources
from receiver.ui import filters
from receiver.ui.session import csrf_ok
from receiver.ui.signin import NotSignedIn, SignIn, Viewer, form_fields

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
PAGE_SIZE = 48
CHATS_SHOWN = 500
MAX_FORM_BYTES = 16 * 1024
SECURITY_HEADERS = {
    # Previews load from the tenants' buckets (presigned URLs on their own origins).
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' http: https: data:; media-src 'self' http: https:; "
        "script-src 'self'; style-src 'self'; object-src 'none'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


Page = Callable[[Request, Viewer], Awaitable[Response]]


class Dashboard:
    """The dashboard's pages; its routes come from ``routes()``. The database, broker and S3
    clients are the app's (receiver/resources.py), read per request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        filters.install(self._env)
        self._sign_in = SignIn(settings, self._render)

    def routes(self) -> list[BaseRoute]:
        signed_in = self._signed_in
        return [
            Route("/ui", self.redirect_home),
            Route("/ui/", signed_in(self.overview)),
            *self._sign_in.routes(),
            Route("/ui/chats", signed_in(self.chats)),
            Route("/ui/audit", signed_in(self.audit)),
            Route("/ui/media", signed_in(self.media_grid)),
            Route("/ui/media/{pk:int}", signed_in(self.media_detail)),
            Route("/ui/content/{pk:int}", signed_in(self.content)),
            Route("/ui/failures", signed_in(self.failures)),
            Route("/ui/failures/retry", signed_in(self.retry), methods=["POST"]),
            Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static"),
        ]

    # -- plumbing -----------------------------------------------------------------------

    def _render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self._env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def redirect_home(self, _: Request) -> Response:
        return RedirectResponse("/ui/", status_code=303)

    def _signed_in(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        """The route endpoint for ``page``: only for a signed-in viewer, errors as pages."""

        async def endpoint(request: Request) -> Response:
            engine = resources.of(request).engine
            try:
                viewer = await run_in_threadpool(self._sign_in.viewer, engine, request)
            except NotSignedIn:
                if request.method == "GET" and not request.url.path.startswith("/ui/content/"):
                    return RedirectResponse("/ui/login", status_code=303)
                return self._render("error.html", 401, message="Sign in again.", viewer=None)
            try:
                return await page(request, viewer)
            except PayloadError as exc:
                return self._render("error.html", 400, message=str(exc), viewer=viewer)
            except NotFound:
                return self._render("error.html", 404, message="Not found.", viewer=viewer)

        endpoint.__name__ = page.__name__
        return endpoint

    def _base(self, viewer: Viewer, active: str) -> dict[str, Any]:
        return {
            "viewer": viewer,
            "active": active,
            "csrf": viewer.session.csrf,
            "who": "admin (all tenants)" if viewer.tenant is None else viewer.tenant.name,
        }

    def _tenant_names(self, engine: Engine) -> dict[int, str]:
        with session_scope(engine) as db:
            return {t.saved_id: t.name for t in list_tenants(db)}

    def _row(self, engine: Engine, viewer: Viewer, pk: int) -> tuple[Media, Tenant]:
        """A row the viewer may see, or NotFound (another tenant's row is simply not there)."""
        with session_scope(engine) as db:
            row = queries.get_row(db, pk=pk)
            if row is None or (viewer.tenant_id is not None and row.tenant_id != viewer.tenant_id):
                raise NotFound("no such media")
            return row, get_tenant_by_id(db, tenant_id=row.tenant_id)

    # -- overview -----------------------------------------------------------------------

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        engine = resources.of(request).engine

        def work() -> dict[str, Any]:
            now = utcnow()
            with session_scope(engine) as db:
                counts = figures.stats(db, tenant_id=viewer.tenant_id)
                backlog = figures.backlog(db, tenant_id=viewer.tenant_id)
                rate = figures.archive_rate(db, tenant_id=viewer.tenant_id, now=now)
                held = pauses.paused(db, tenant_id=viewer.tenant_id)
                held_sessions = pauses.paused_sessions(db, tenant_id=viewer.tenant_id)
            oldest = backlog.oldest_unarchived
            age = (now - oldest) if oldest else None
            level = "ok"
            if age is not None and age >= CRITICAL_AGE:
                level = "critical"
            elif age is not None and age >= WARN_AGE:
                level = "warning"
            peak = max((n for _, n in rate), default=0)
            return {
                "by_status": [(s.value, *counts.by_status.get(s.value, (0, 0))) for s in Status],
                "by_type": sorted(counts.by_type.items()),
                "total": sum(n for n, _ in counts.by_status.values()),
                "rate": [(start, n, (100 * n // peak) if peak else 0) for start, n in rate],
                "last_hour": sum(n for _, n in rate),
                "oldest_age": age.total_seconds() if age else None,
                "level": level,
                "paused": held,
                "paused_sessions": held_sessions,
                "expires_in": (WHATSAPP_KEEPS - age).total_seconds() if age else None,
                "damaged": counts.by_status.get(Status.DAMAGED.value, (0, 0))[0],
            }

        return self._render(
            "overview.html", **self._base(viewer, "overview"), **(await run_in_threadpool(work))
        )

    # -- media browser ------------------------------------------------------------------

    async def media_grid(self, request: Request, viewer: Viewer) -> Response:
        form, params = filters.grid_query(request.query_params, admin=viewer.admin)
        query = parse_query(params)
        engine = resources.of(request).engine

        def work() -> dict[str, Any]:
            names = self._tenant_names(engine)
            tenant_id = viewer.tenant_id
            if viewer.admin and query.tenant is not None:
                found = [i for i, n in names.items() if n == query.tenant]
                if not found:
                    raise PayloadError("tenant: no such tenant")
                tenant_id = found[0]
            with session_scope(engine) as db:
                rows = queries.search(db, tenant_id=tenant_id, query=query)
            following = None
            if len(rows) == query.limit and rows[-1].received_at and rows[-1].pk:
                cursor = encode_cursor(rows[-1].received_at, rows[-1].pk)
                following = "?" + urlencode(
                    {**{k: v for k, v in form.items() if k != "cursor"}, "cursor": cursor}
                )
            return {
                "rows": [(row, names.get(row.tenant_id, "?")) for row in rows],
                "next_page": following,
                "first_page": "?" + urlencode({k: v for k, v in form.items() if k != "cursor"}),
                "paged": "cursor" in form,
                "tenants": sorted(names.values()) if viewer.admin else [],
            }

        context = await run_in_threadpool(work)
        return self._render(
            "media.html",
            **self._base(viewer, "media"),
            **context,
            form=form,
            types=sorted(MEDIA_TYPES),
            statuses=[s.value for s in Status],
        )

    async def media_detail(self, request: Request, viewer: Viewer) -> Response:
        engine = resources.of(request).engine
        row, tenant = await run_in_threadpool(self._row, engine, viewer, request.path_params["pk"])
        info = media_info(row, tenant=tenant.name)
        return self._render("detail.html", **self._base(viewer, "media"), row=row, info=info)

    async def content(self, request: Request, viewer: Viewer) -> Response:
        res = resources.of(request)

        def work() -> Response:
            row, tenant = self._row(res.engine, viewer, request.path_params["pk"])
            key = redirects.original_key(row, tenant)
            if row.status != Status.ARCHIVED or key is None:
                return Response("not archived in this tenant's bucket", status_code=404)
            download = request.query_params.get("download") == "1"
            mime_type = None if download else row.mime_type  # None: always an attachment
            kind = request.query_params.get("rendition")
            if kind is not None:
                found = renditions.find(row.renditions, kind)
                if found is None:
                    return Response("no such rendition (yet)", status_code=404)
                key, mime_type = found.key, found.mime_type
            filename = row.filename if kind is None else None
            return redirects.to_object(
                res, tenant, row, key=key, mime_type=mime_type, filename=filename
            )

        return await run_in_threadpool(work)

    # -- failures -----------------------------------------------------------------------

    async def failures(self, request: Request, viewer: Viewer) -> Response:
        engine = resources.of(request).engine

        def work() -> dict[str, Any]:
            names = self._tenant_names(engine)
            now = utcnow()
            with session_scope(engine) as db:
                failed = queries.search(
                    db,
                    tenant_id=viewer.tenant_id,
                    query=parse_query({"status": "failed", "limit": "200"}),
                )
                stuck = queries.stuck(
                    db,
                    tenant_id=viewer.tenant_id,
                    now=now,
                    older_than=timedelta(seconds=self._settings.stuck_after_seconds),
                    limit=200,
                )
            return {
                "failed": [(row, names.get(row.tenant_id, "?")) for row in failed],
                "stuck": [
                    (
                        row,
                        names.get(row.tenant_id, "?"),
                        (now - row.received_at).total_seconds() if row.received_at else None,
                    )
                    for row in stuck
                ],
                "notice": request.query_params.get("retried"),
            }

        return self._render(
            "failures.html", **self._base(viewer, "failures"), **(await run_in_threadpool(work))
        )

    async def retry(self, request: Request, viewer: Viewer) -> Response:
        form = await form_fields(request)
        if not csrf_ok(viewer.session, form.get("csrf")):
            log.warning("dashboard retry refused: bad CSRF token", extra={"outcome": "forbidden"})
            return self._render(
                "error.html", 403, message="Stale form; reload and try again.", viewer=viewer
            )

        res = resources.of(request)

        def work() -> int:
            if form.get("pk"):
                try:
                    pk = int(form["pk"])
                except ValueError as exc:
                    raise PayloadError("pk: not a media row") from exc
                row, _ = self._row(res.engine, viewer, pk)
                return retry_failed(
                    res.engine,
                    res.celery,
                    self._settings,
                    tenant_id=row.tenant_id,
                    media_ids=[row.media_id],
                )
            # Every failed row the viewer can see: one tenant, or all of them for the admin.
            return retry_failed(
                res.engine,
                res.celery,
                self._settings,
                tenant_id=viewer.tenant_id,
                media_ids=None,
            )

        count = await run_in_threadpool(work)
        await run_in_threadpool(
            self._audit_action,
            res.engine,
            viewer,
            "media.retry",
            {"pk": form.get("pk"), "requeued": count},
        )
        log.info(
            "dashboard retry: %d failed rows re-queued",
            count,
            extra={"outcome": "retried", "tenant": viewer.tenant.name if viewer.tenant else None},
        )
        back = form.get("back", "/ui/failures")
        if not back.startswith("/ui/") or back.startswith("//"):
            back = "/ui/failures"
        separator = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{separator}retried={count}", status_code=303)

    def _audit_action(
        self, engine: Engine, viewer: Viewer, action: str, detail: dict[str, Any]
    ) -> None:
        actor = "admin" if viewer.admin else f"key:{viewer.session.key_id}"
        with session_scope(engine) as db:
            audit.record(
                db,
                actor=actor,
                action=action,
                tenant_id=viewer.tenant_id,
                tenant=viewer.tenant.name if viewer.tenant else None,
                detail=detail,
            )

    # -- chats --------------------------------------------------------------------------

    async def chats(self, request: Request, viewer: Viewer) -> Response:
        engine = resources.of(request).engine

        def work() -> dict[str, Any]:
            names = self._tenant_names(engine)
            with session_scope(engine) as db:
                found = figures.chats(db, tenant_id=viewer.tenant_id, limit=CHATS_SHOWN)
            lines = []
            for chat in found:
                tenant = names.get(chat.tenant_id, "?")
                link = {"chat": chat.chat} | ({"tenant": tenant} if viewer.admin else {})
                lines.append((chat, tenant, "/ui/media?" + urlencode(link)))
            return {"chats": lines, "more": len(found) == CHATS_SHOWN}

        return self._render(
            "chats.html", **self._base(viewer, "chats"), **(await run_in_threadpool(work))
        )

    # -- audit trail (admin) ------------------------------------------------------------

    async def audit(self, request: Request, viewer: Viewer) -> Response:
        if not viewer.admin:
            return self._render(
                "error.html", 403, message="The audit trail is for the admin.", viewer=viewer
            )
        engine = resources.of(request).engine
        tenant = request.query_params.get("tenant", "").strip() or None

        def work() -> list[dict[str, Any]]:
            with session_scope(engine) as db:
                events = audit.listing(db, audit.AuditFilter(tenant=tenant, limit=300))
                return [audit.as_dict(e) for e in events]

        return self._render(
            "audit.html",
            **self._base(viewer, "audit"),
            events=await run_in_threadpool(work),
            tenant=tenant or "",
        )
