"""The query API: media rows, their content and statistics, scoped by the caller's key.

A tenant key sees only its tenant, whatever the parameters; the admin key (from settings)
sees every tenant and may narrow to one with ``tenant``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from archiver import media
from archiver.api_keys import tenant_for_key
from archiver.buckets import key_in_bucket, presign_get
from archiver.db import session_scope
from archiver.envelope import MAX_ID_LEN, SESSION_RE, has_control
from archiver.errors import NotFound, PayloadError
from archiver.media_info import media_info
from archiver.media_query import MediaQuery, encode_cursor, parse_query
from archiver.tables import Media, Status, Tenant, utcnow
from archiver.tenants import get_tenant, list_tenants
from receiver.tenant_clients import TenantClients


@dataclass(frozen=True)
class Principal:
    """Who is asking: one tenant, or the admin (tenant None)."""

    tenant: Tenant | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _principal(engine: Engine, admin_key: str | None, key: str | None) -> Principal:
    if key is None or len(key) > 200:
        raise ApiError(401, "missing or invalid API key")
    if admin_key is not None and hmac.compare_digest(key.encode(), admin_key.encode()):
        return Principal(tenant=None)
    with session_scope(engine) as session:
        try:
            return Principal(tenant=tenant_for_key(session, key=key))
        except NotFound as exc:
            raise ApiError(401, "missing or invalid API key") from exc


def _scope(engine: Engine, who: Principal, tenant_param: str | None) -> Tenant | None:
    """The tenant a request is confined to (None: admin across all tenants)."""
    if who.tenant is not None:
        if tenant_param is not None and tenant_param != who.tenant.name:
            raise ApiError(403, "tenant: this key reads only its own tenant")
        return who.tenant
    if tenant_param is None:
        return None
    if not SESSION_RE.match(tenant_param):
        raise ApiError(404, "tenant: no such tenant")
    with session_scope(engine) as session:
        try:
            return get_tenant(session, name=tenant_param)
        except NotFound as exc:
            raise ApiError(404, "tenant: no such tenant") from exc


def _cursor(row: Media) -> str:
    assert row.received_at is not None and row.pk is not None
    return encode_cursor(row.received_at, row.pk)


def _tenant_param(request: Request) -> str | None:
    """The only query parameter these endpoints take; anything else is named in a 400."""
    unknown = sorted(set(request.query_params) - {"tenant"})
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown parameter")
    return request.query_params.get("tenant")


def _names(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return {t.id or 0: t.name for t in list_tenants(session)}


class MediaApi:
    """The route handlers; blocking database work runs in Starlette's thread pool."""

    def __init__(
        self, *, engine: Engine, admin_key: str | None, clients: TenantClients, presign_ttl: int
    ) -> None:
        self._engine = engine
        self._admin_key = admin_key
        self._clients = clients
        self._ttl = presign_ttl

    async def _call(self, request: Request, work: Any) -> Response:
        try:
            return await run_in_threadpool(work, request)
        except ApiError as exc:
            return error(exc.status, str(exc))
        except PayloadError as exc:
            return error(400, str(exc))

    # -- GET /api/media -------------------------------------------------------------------

    async def list_media(self, request: Request) -> Response:
        return await self._call(request, self._list)

    def _list(self, request: Request) -> Response:
        who = _principal(self._engine, self._admin_key, _bearer(request))
        query = parse_query(request.query_params)
        scope = _scope(self._engine, who, query.tenant)
        page = self._page(scope, query)
        return JSONResponse(page)

    def _page(self, scope: Tenant | None, query: MediaQuery) -> dict[str, Any]:
        fetch = MediaQuery(**{**query.__dict__, "limit": query.limit + 1})
        with session_scope(self._engine) as session:
            rows = media.search(session, tenant_id=scope.id if scope else None, query=fetch)
        names = {scope.id or 0: scope.name} if scope else _names(self._engine)
        page, more = rows[: query.limit], len(rows) > query.limit
        return {
            "data": [media_info(r, tenant=names.get(r.tenant_id, "?")) for r in page],
            "nextCursor": _cursor(page[-1]) if more and page else None,
        }

    # -- GET /api/media/{id} and /content ---------------------------------------------------

    def _one(self, request: Request) -> tuple[Media, Tenant]:
        who = _principal(self._engine, self._admin_key, _bearer(request))
        scope = _scope(self._engine, who, _tenant_param(request))
        if scope is None:
            raise PayloadError("tenant: the admin key must name the tenant of a media id")
        media_id = request.path_params["id"]
        if not media_id or len(media_id) > MAX_ID_LEN or has_control(media_id):
            raise ApiError(404, "not found")  # no stored id can look like this
        with session_scope(self._engine) as session:
            row = media.get_media(session, tenant_id=scope.id or 0, media_id=media_id)
        if row is None:
            raise ApiError(404, "not found")
        return row, scope

    async def get_media(self, request: Request) -> Response:
        def work(req: Request) -> Response:
            row, tenant = self._one(req)
            return JSONResponse({"data": media_info(row, tenant=tenant.name)})

        return await self._call(request, work)

    async def content(self, request: Request) -> Response:
        def work(req: Request) -> Response:
            row, tenant = self._one(req)
            if row.status != Status.ARCHIVED:
                raise ApiError(409, f"not archived yet (status {row.status})")
            key = row.object_key
            if key is None and row.s3_url:
                key = key_in_bucket(row.s3_url, bucket=tenant.s3_bucket)
            if key is None:
                raise ApiError(409, "the file is stored outside this tenant's bucket")
            url = presign_get(
                self._clients.s3(tenant),
                bucket=row.bucket or tenant.s3_bucket,
                key=key,
                ttl=self._ttl,
                mime_type=row.mime_type,
            )
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

        return await self._call(request, work)

    # -- GET /api/stats ---------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        def work(req: Request) -> Response:
            who = _principal(self._engine, self._admin_key, _bearer(req))
            scope = _scope(self._engine, who, _tenant_param(req))
            tenant_id = scope.id if scope else None
            with session_scope(self._engine) as session:
                figures = media.stats(session, tenant_id=tenant_id)
                backlog = media.backlog(session, tenant_id=tenant_id)
            oldest = backlog.oldest_unarchived
            return JSONResponse(
                {
                    "data": {
                        "byStatus": {
                            k: {"count": n, "bytes": b} for k, (n, b) in figures.by_status.items()
                        },
                        "byType": {
                            k: {"count": n, "bytes": b} for k, (n, b) in figures.by_type.items()
                        },
                        "oldestUnarchivedAgeSeconds": round((utcnow() - oldest).total_seconds(), 3)
                        if oldest
                        else None,
                    }
                }
            )

        return await self._call(request, work)
