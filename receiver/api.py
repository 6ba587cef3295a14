"""The query API: media rows, their content and statistics, scoped by the caller's key.

Each route handler runs its blocking database work in Starlette's thread pool and answers
with a public shape (archiver/media/shapes.py).

A tenant key sees only its tenant, whatever the parameters; the admin key (from settings)
sees every tenant and may narrow to one with ``tenant``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from sqlalchemy import Engine, update
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from archiver.errors import NotFound, PayloadError, Unavailable
from archiver.governance import audit, bundle
from archiver.governance.erasure import Selector, erase_recorded
from archiver.infra.broker import publish_task
from archiver.infra.db import session_scope
from archiver.media import query as queries
from archiver.media import renditions
from archiver.media.query import MediaQuery, encode_cursor, parse_query
from archiver.media.shapes import (
    AuditPage,
    AuditRecord,
    Counts,
    Erasure,
    ErasureAnswer,
    ExportJobAnswer,
    ExportJobInfo,
    MediaInfo,
    MediaPage,
    OneMedia,
    PausedSession,
    PausedTenant,
    Stats,
    StatsAnswer,
)
from archiver.names import MAX_ID_LEN, SESSION_RE, has_control, valid_text
from archiver.queue import EXPORT_TASK, LARGE_QUEUE
from archiver.reporting import figures
from archiver.scheduling import pauses
from archiver.tables import ExportJob, Media, Status, Tenant, utcnow
from archiver.tenants.api_keys import tenant_for_key
from archiver.tenants.tenants import get_tenant, list_tenants
from receiver import redirects, resources
from receiver.answers import ShapeResponse, error
from receiver.principal import Principal
from receiver.resources import Resources


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def _tenant_param(request: Request, *, also: frozenset[str] = frozenset()) -> str | None:
    """The only query parameter these endpoints take (and ``also``, a route's own); anything
    else is named in a 400."""
    unknown = sorted(set(request.query_params) - {"tenant"} - also)
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown parameter")
    return request.query_params.get("tenant")


def _names(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return {t.saved_id: t.name for t in list_tenants(session)}


def _admin_key(res: Resources) -> str | None:
    key = res.settings.admin_api_key
    return key.get_secret_value() if key else None


async def _answer(request: Request, work: Callable[[Resources, Request], Response]) -> Response:
    """Run ``work`` in Starlette's thread pool (it blocks on the database); map our errors."""
    try:
        return await run_in_threadpool(work, resources.of(request), request)
    except ApiError as exc:
        return error(exc.status, str(exc))
    except PayloadError as exc:
        return error(400, str(exc))


# -- GET /api/media -----------------------------------------------------------------------


async def list_media(request: Request) -> Response:
    return await _answer(request, _list)


def _list(res: Resources, request: Request) -> Response:
    who = _principal(res.engine, _admin_key(res), _bearer(request))
    query = parse_query(request.query_params)
    scope = _scope(res.engine, who, query.tenant)
    return ShapeResponse(_page(res.engine, scope, query))


def _page(engine: Engine, scope: Tenant | None, query: MediaQuery) -> MediaPage:
    fetch = MediaQuery(**{**query.__dict__, "limit": query.limit + 1})
    with session_scope(engine) as session:
        rows = queries.search(
            session, tenant_id=scope.id if scope else None, query=fetch, info_only=True
        )
    names = {scope.saved_id: scope.name} if scope else _names(engine)
    page, more = rows[: query.limit], len(rows) > query.limit
    return MediaPage(
        data=[MediaInfo.of(r, tenant=names.get(r.tenant_id, "?")) for r in page],
        next_cursor=_cursor(page[-1]) if more and page else None,
    )


# -- GET /api/media/{id} and /content -------------------------------------------------------


def _one(
    res: Resources, request: Request, *, also: frozenset[str] = frozenset()
) -> tuple[Media, Tenant]:
    who = _principal(res.engine, _admin_key(res), _bearer(request))
    scope = _scope(res.engine, who, _tenant_param(request, also=also))
    if scope is None:
        raise PayloadError("tenant: the admin key must name the tenant of a media id")
    media_id = request.path_params["id"]
    if not media_id or len(media_id) > MAX_ID_LEN or has_control(media_id):
        raise ApiError(404, "not found")  # no stored id can look like this
    with session_scope(res.engine) as session:
        row = queries.get_media(session, tenant_id=scope.saved_id, media_id=media_id)
    if row is None:
        raise ApiError(404, "not found")
    return row, scope


async def get_media(request: Request) -> Response:
    return await _answer(request, _get)


def _get(res: Resources, request: Request) -> Response:
    row, tenant = _one(res, request)
    return ShapeResponse(OneMedia(data=MediaInfo.of(row, tenant=tenant.name)))


async def content(request: Request) -> Response:
    return await _answer(request, _content)


def _content(res: Resources, request: Request) -> Response:
    row, tenant = _one(res, request, also=frozenset({"rendition"}))
    kind = request.query_params.get("rendition")
    if kind is not None and kind not in renditions.KINDS:
        raise PayloadError(f"rendition: must be one of {', '.join(renditions.KINDS)}")
    if row.status != Status.ARCHIVED:
        raise ApiError(409, f"not archived yet (status {row.status})")
    if kind is not None:
        return _rendition(res, row, tenant, kind)
    key = redirects.original_key(row, tenant)
    if key is None:
        raise ApiError(409, "the file is stored outside this tenant's bucket")
    return redirects.to_object(res, tenant, row, key=key, mime_type=row.mime_type)


async def thumbnail(request: Request) -> Response:
    return await _answer(request, _thumbnail)


def _thumbnail(res: Resources, request: Request) -> Response:
    row, tenant = _one(res, request)
    if row.status != Status.ARCHIVED:
        raise ApiError(409, f"not archived yet (status {row.status})")
    return _rendition(res, row, tenant, renditions.THUMBNAIL)


def _rendition(res: Resources, row: Media, tenant: Tenant, kind: str) -> Response:
    found = renditions.find(row.renditions, kind)
    if found is None:
        state = row.render_state or "not asked"
        raise ApiError(404, f"no {kind} rendition (render {state})")
    return redirects.to_object(res, tenant, row, key=found.key, mime_type=found.mime_type)


# -- GET /api/stats -------------------------------------------------------------------------


async def stats(request: Request) -> Response:
    return await _answer(request, _stats)


def _stats(res: Resources, request: Request) -> Response:
    who = _principal(res.engine, _admin_key(res), _bearer(request))
    scope = _scope(res.engine, who, _tenant_param(request))
    tenant_id = scope.id if scope else None
    with session_scope(res.engine) as session:
        found = figures.stats(session, tenant_id=tenant_id)
        backlog = figures.backlog(session, tenant_id=tenant_id)
        held = pauses.paused(session, tenant_id=tenant_id)
        held_sessions = pauses.paused_sessions(session, tenant_id=tenant_id)
    oldest = backlog.oldest_unarchived
    return ShapeResponse(
        StatsAnswer(
            data=Stats(
                by_status={k: Counts(count=n, size=b) for k, (n, b) in found.by_status.items()},
                by_type={k: Counts(count=n, size=b) for k, (n, b) in found.by_type.items()},
                oldest_unarchived_age_seconds=round((utcnow() - oldest).total_seconds(), 3)
                if oldest
                else None,
                paused_tenants=[
                    PausedTenant(tenant=p.tenant, reason=p.reason, since=p.since, auto=p.auto)
                    for p in held
                ],
                paused_sessions=[
                    PausedSession(
                        tenant=p.tenant, session=p.session, reason=p.reason, since=p.since
                    )
                    for p in held_sessions
                ],
            )
        )
    )


# -- Admin: POST /api/admin/erase, GET /api/admin/audit -------------------------------------


def _admin_only(res: Resources, request: Request) -> None:
    who = _principal(res.engine, _admin_key(res), _bearer(request))
    if not who.admin:
        raise ApiError(403, "this route needs the admin key")


_ERASE_FIELDS = {"tenant", "ids", "sender", "chat", "includeHeld"}


def _erase_request(body: bytes) -> tuple[str, Selector]:
    try:
        doc = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("body: not valid JSON") from exc
    if not isinstance(doc, dict):
        raise PayloadError("body: a JSON object with tenant and one of ids, sender, chat")
    unknown = sorted(set(doc) - _ERASE_FIELDS)
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown field")
    tenant = doc.get("tenant")
    if not isinstance(tenant, str) or not SESSION_RE.match(tenant):
        raise PayloadError("tenant: required, a tenant name")
    ids = doc.get("ids")
    chosen = [k for k in ("ids", "sender", "chat") if doc.get(k) is not None]
    if len(chosen) != 1:
        raise PayloadError("say what to erase: exactly one of ids, sender, chat")
    if ids is not None and (
        not isinstance(ids, list)
        or not 0 < len(ids) <= 1000
        or not all(
            isinstance(i, str) and 0 < len(i) <= MAX_ID_LEN and not has_control(i) for i in ids
        )
    ):
        raise PayloadError("ids: a list of 1 to 1000 media ids")
    for name in ("sender", "chat"):
        value = doc.get(name)
        if value is not None and (
            not isinstance(value, str) or not 0 < len(value) <= 255 or has_control(value)
        ):
            raise PayloadError(f"{name}: 1 to 255 printable characters")
    held = doc.get("includeHeld", False)
    if not isinstance(held, bool):
        raise PayloadError("includeHeld: true or false")
    return tenant, Selector(
        media_ids=tuple(ids or ()),
        sender=doc.get("sender"),
        chat=doc.get("chat"),
        include_held=held,
    )


async def erase(request: Request) -> Response:
    body = await request.body()

    def work(res: Resources, request: Request) -> Response:
        _admin_only(res, request)
        name, selector = _erase_request(body)
        with session_scope(res.engine) as session:
            try:
                tenant = get_tenant(session, name=name)
            except NotFound as exc:
                raise ApiError(404, "tenant: no such tenant") from exc
        done = erase_recorded(res.engine, tenant, selector, s3_for=res.s3.get, actor="admin")
        return ShapeResponse(ErasureAnswer(data=Erasure.of(tenant.name, done.doc())))

    return await _answer(request, work)


async def audit_list(request: Request) -> Response:
    return await _answer(request, _audit)


def _audit(res: Resources, request: Request) -> Response:
    _admin_only(res, request)
    params = request.query_params
    unknown = sorted(set(params) - {"tenant", "action", "actor", "limit"})
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown parameter")
    limit_text = params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise PayloadError("limit: an integer from 1 to 1000")
    flt = audit.AuditFilter(
        tenant=params.get("tenant"),
        action=params.get("action"),
        actor=params.get("actor"),
        limit=int(limit_text),
    )
    with session_scope(res.engine) as session:
        docs = [audit.as_dict(e) for e in audit.listing(session, flt)]
    return ShapeResponse(AuditPage(data=[AuditRecord.model_validate(d) for d in docs]))


# -- Admin: POST /api/admin/export-bundle, GET /api/admin/export-bundle/{id} ----------------

_EXPORT_FIELDS = {"tenant", "chat", "sender", "since", "until", "zip"}


async def export_bundle(request: Request) -> Response:
    body = await request.body()

    def work(res: Resources, request: Request) -> Response:
        _admin_only(res, request)
        if not res.settings.export_dir:
            raise ApiError(409, "exports are off: set ARCHIVER_EXPORT_DIR on the workers")
        name, filters, zipped = _export_request(body)
        parse_query(filters)  # a bad date or value is a 400 now, not a failed job later
        with session_scope(res.engine) as session:
            try:
                tenant = get_tenant(session, name=name)
            except NotFound as exc:
                raise ApiError(404, "tenant: no such tenant") from exc
            job = bundle.queue_job(
                session,
                tenant=tenant,
                filters=filters,
                export_dir=res.settings.export_dir,
                zipped=zipped,
            )
            audit.record(
                session,
                actor="admin",
                action="media.export-bundle.queued",
                tenant_id=tenant.id,
                tenant=tenant.name,
                detail={"job": job.id, **filters},
            )
            info = ExportJobInfo.of(job)
        try:
            publish_task(res.celery, task=EXPORT_TASK, args=[info.id], queue=LARGE_QUEUE)
        except Unavailable:
            with session_scope(res.engine) as session:
                session.execute(
                    update(ExportJob)
                    .where(col(ExportJob.id) == info.id)
                    .values(status="failed", error="the broker was unavailable; ask again")
                )
            raise
        return ShapeResponse(ExportJobAnswer(data=info), status_code=202)

    return await _answer(request, work)


def _export_request(body: bytes) -> tuple[str, dict[str, str], bool]:
    try:
        doc = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("body: not valid JSON") from exc
    if not isinstance(doc, dict):
        raise PayloadError("body: a JSON object with tenant")
    unknown = sorted(set(doc) - _EXPORT_FIELDS)
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown field")
    tenant = doc.get("tenant")
    if not isinstance(tenant, str) or not SESSION_RE.match(tenant):
        raise PayloadError("tenant: required, a tenant name")
    filters: dict[str, str] = {}
    for name in bundle.FILTER_FIELDS:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not valid_text(value):
            raise PayloadError(f"{name}: 1 to 255 printable characters")
        filters[name] = value
    zipped = doc.get("zip", False)
    if not isinstance(zipped, bool):
        raise PayloadError("zip: true or false")
    return tenant, filters, zipped


async def export_status(request: Request) -> Response:
    def work(res: Resources, request: Request) -> Response:
        _admin_only(res, request)
        text = request.path_params["job"]
        if not text.isdigit() or len(text) > 12:
            raise ApiError(404, "no such export")
        with session_scope(res.engine) as session:
            job = session.get(ExportJob, int(text))
            if job is None:
                raise ApiError(404, "no such export")
            info = ExportJobInfo.of(job)
        return ShapeResponse(ExportJobAnswer(data=info))

    return await _answer(request, work)
