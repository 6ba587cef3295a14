"""The query API: ``GET /api/media`` and ``GET /api/media/{id}``, scoped by the caller's API key."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from archiver import media
from archiver.api_keys import tenant_for_key
from archiver.db import session_scope
from archiver.errors import NotFound, PayloadError
from archiver.media_info import media_info
from archiver.tables import Status, Tenant

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_STATUSES = {s.value for s in Status}


def encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise PayloadError("cursor: not a cursor this API issued") from exc


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise PayloadError(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate(engine: Engine, key: str | None) -> Tenant | None:
    if key is None:
        return None
    with session_scope(engine) as session:
        try:
            return tenant_for_key(session, key=key)
        except NotFound:
            return None


UNAUTHENTICATED = JSONResponse(
    {"error": "missing or invalid API key"},
    status_code=401,
    headers={"WWW-Authenticate": "Bearer"},
)


async def list_media(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    tenant = await run_in_threadpool(_authenticate, engine, _bearer(request))
    if tenant is None:
        return UNAUTHENTICATED
    params = request.query_params
    try:
        limit = _limit(params.get("limit"))
        cursor = params.get("cursor")
        after_pk = decode_cursor(cursor) if cursor else None
        status = params.get("status")
        if status is not None and status not in _STATUSES:
            raise PayloadError(f"status: must be one of {sorted(_STATUSES)}")
    except PayloadError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)

    def query() -> dict[str, Any]:
        with session_scope(engine) as session:
            rows = media.list_media(
                session,
                tenant_id=tenant.id,
                session_name=params.get("session"),
                status=status,
                message_id=params.get("messageId"),
                limit=limit + 1,
                after_pk=after_pk,
            )
        page = rows[:limit]
        more = len(rows) > limit
        return {
            "data": [media_info(row, tenant=tenant.name) for row in page],
            "nextCursor": encode_cursor(page[-1].pk or 0) if more and page else None,
        }

    return JSONResponse(await run_in_threadpool(query))


async def get_media(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    tenant = await run_in_threadpool(_authenticate, engine, _bearer(request))
    if tenant is None:
        return UNAUTHENTICATED
    assert tenant.id is not None
    tenant_id = tenant.id

    def query() -> dict[str, Any] | None:
        with session_scope(engine) as session:
            row = media.get_media(session, tenant_id=tenant_id, media_id=request.path_params["id"])
        return None if row is None else {"data": media_info(row, tenant=tenant.name)}

    found = await run_in_threadpool(query)
    if found is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse(found)
