"""The read side of the archive: the media query (every filter defined once, parsed strictly,
for the API, the CLI, the dashboard and OpenAPI) and the queries that read rows with it.

``parse_query`` turns raw string parameters into a ``MediaQuery`` or raises PayloadError
whose message starts with the offending parameter's name; ``search`` returns one page.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import literal, or_, tuple_
from sqlalchemy.orm import load_only
from sqlmodel import Session, and_, col, select

from archiver.errors import PayloadError
from archiver.names import MEDIA_TYPES, SESSION_RE, valid_text
from archiver.tables import PENDING, Media, Status, UTCDateTime

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MIME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/([A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*)?$"
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
CURSOR_PATTERN = r"^c[0-9a-z]{1,14}\.[0-9a-z]{1,13}$"
MAX_SIZE = 2**53
_MIME_RE = re.compile(MIME_PATTERN)
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True)
class Filter:
    """One query parameter: its OpenAPI schema and what it means."""

    name: str
    schema: dict[str, Any]
    description: str


FILTERS: tuple[Filter, ...] = (
    Filter("session", {"type": "string", "pattern": SESSION_RE.pattern}, "Titan session name."),
    Filter("status", {"type": "string", "enum": [s.value for s in Status]}, "Archive status."),
    Filter("type", {"type": "string", "enum": sorted(MEDIA_TYPES)}, "WhatsApp message type."),
    Filter(
        "mimeType",
        {"type": "string", "maxLength": 255, "pattern": MIME_PATTERN},
        "Exact MIME type (image/jpeg), or a prefix ending in '/' (image/).",
    ),
    Filter(
        "messageId",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": PRINTABLE_PATTERN},
        "WhatsApp message id.",
    ),
    Filter(
        "sender",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": PRINTABLE_PATTERN},
        "Sender's phone number or lid.",
    ),
    Filter(
        "chat",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": PRINTABLE_PATTERN},
        "The conversation: a group's id (…@g.us), or the contact of a one-to-one chat.",
    ),
    Filter("isGroup", {"type": "boolean"}, "Group messages (true) or one-to-one (false)."),
    Filter("fromMe", {"type": "boolean"}, "Sent by the business's own number (true) or received."),
    Filter("persisted", {"type": "boolean"}, "Whether the file is in the tenant's bucket."),
    Filter("since", {"type": "string", "format": "date-time"}, "Received at or after (ISO 8601)."),
    Filter("until", {"type": "string", "format": "date-time"}, "Received before (ISO 8601)."),
    Filter(
        "minSize",
        {"type": "integer", "minimum": 0, "maximum": MAX_SIZE},
        "Smallest fileLength in bytes.",
    ),
    Filter(
        "maxSize",
        {"type": "integer", "minimum": 0, "maximum": MAX_SIZE},
        "Largest fileLength in bytes.",
    ),
    Filter(
        "order",
        {"type": "string", "enum": ["desc", "asc"], "default": "desc"},
        "Newest first (desc, default) or oldest first (asc).",
    ),
    Filter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Rows per page.",
    ),
    Filter(
        "cursor",
        {"type": "string", "pattern": CURSOR_PATTERN},
        "nextCursor of the previous page: a position, valid in either order.",
    ),
    Filter(
        "tenant",
        {"type": "string", "pattern": SESSION_RE.pattern},
        "Restrict to one tenant (in the HTTP API: admin key only).",
    ),
)
NAMES = frozenset(f.name for f in FILTERS)


@dataclass(frozen=True)
class MediaQuery:
    session: str | None = None
    status: str | None = None
    type: str | None = None
    mime_type: str | None = None  # exact, or a prefix when it ends with "/"
    message_id: str | None = None
    sender: str | None = None
    chat: str | None = None
    is_group: bool | None = None
    from_me: bool | None = None
    persisted: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_size: int | None = None
    max_size: int | None = None
    order: str = "desc"
    limit: int = DEFAULT_LIMIT
    after: tuple[datetime, int] | None = None  # decoded cursor: (received_at, pk) of the last row
    tenant: str | None = None


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _b36(n: int) -> str:
    digits = ""
    while True:
        n, rest = divmod(n, 36)
        digits = _DIGITS[rest] + digits
        if n == 0:
            return digits


def encode_cursor(received_at: datetime, pk: int) -> str:
    """An opaque position in the listing order (received time, then pk); valid in either order."""
    micros = max(0, (received_at - _EPOCH) // timedelta(microseconds=1))
    return f"c{_b36(micros)}.{_b36(pk)}"


_MAX_PK = 2**63 - 1
_MAX_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position a cursor names; out-of-range parts are clamped (a position past the end)."""
    if not _CURSOR_RE.match(cursor):
        raise PayloadError("cursor: not a cursor this API issued")
    micros, pk = cursor[1:].split(".")
    clamped = min(int(micros, 36), _MAX_MICROS)
    return _EPOCH + timedelta(microseconds=clamped), min(int(pk, 36), _MAX_PK)


def _text(params: Mapping[str, str], name: str, limit: int = 255) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not valid_text(value, limit=limit):
        raise PayloadError(f"{name}: must be 1 to {limit} printable characters")
    return value


def _choice(params: Mapping[str, str], name: str, allowed: set[str] | frozenset[str]) -> str | None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise PayloadError(f"{name}: must be one of {', '.join(sorted(allowed))}")
    return value


def _flag(params: Mapping[str, str], name: str) -> bool | None:
    value = _choice(params, name, {"true", "false"})
    return None if value is None else value == "true"


def _integer(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise PayloadError(f"{name}: must be an integer from {low} to {high}")
    return int(value)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    if _DATE.match(value):  # a plain date is that day's start, in UTC
        value += "T00:00:00Z"
    match = _RFC3339.match(value)
    if match is None:
        raise PayloadError(
            f"{name}: must be a date (2025-01-15) or an RFC 3339 date-time (2025-01-15T10:30:00Z)"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        offset = (
            timedelta(0)
            if zone in ("Z", "z")
            else (1 if zone[0] == "+" else -1)
            * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        )
        local = datetime(  # a leap second counts as :59
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            min(int(second), 59),
            micros,
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise PayloadError(f"{name}: not a real date-time ({exc})") from exc
    try:
        return local - offset
    except OverflowError:
        # Beyond year 1 or 9999 once the offset is applied: the edge of time will do.
        return (
            local.replace(year=1, month=1, day=1)
            if offset > timedelta(0)
            else local.replace(year=9999, month=12, day=31)
        )


def parse_query(params: Mapping[str, str]) -> MediaQuery:
    """Validate raw parameters; unknown parameters are refused so typos do not go unnoticed."""
    unknown = sorted(set(params) - NAMES)
    if unknown:
        raise PayloadError(f"{unknown[0]}: unknown parameter")
    session = _text(params, "session", 64)
    if session is not None and not SESSION_RE.match(session):
        raise PayloadError("session: not a valid Titan session name")
    tenant = _text(params, "tenant", 64)
    if tenant is not None and not SESSION_RE.match(tenant):
        raise PayloadError("tenant: not a valid tenant name")
    mime = _text(params, "mimeType")
    if mime is not None:
        mime = mime.lower()
        if not _MIME_RE.match(mime):
            raise PayloadError("mimeType: must be a MIME type (image/jpeg) or a prefix (image/)")
    persisted = _flag(params, "persisted")
    order = _choice(params, "order", {"asc", "desc"}) or "desc"
    query = MediaQuery(
        session=session,
        status=_choice(params, "status", {s.value for s in Status}),
        type=_choice(params, "type", MEDIA_TYPES),
        mime_type=mime,
        message_id=_text(params, "messageId"),
        sender=_text(params, "sender"),
        chat=_text(params, "chat"),
        is_group=_flag(params, "isGroup"),
        from_me=_flag(params, "fromMe"),
        persisted=persisted,
        since=_time(params, "since"),
        until=_time(params, "until"),
        min_size=_integer(params, "minSize", 0, MAX_SIZE),
        max_size=_integer(params, "maxSize", 0, MAX_SIZE),
        order=order,
        limit=_integer(params, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT,
        after=decode_cursor(params["cursor"]) if "cursor" in params else None,
        tenant=tenant,
    )
    # A reversed range (since after until, minSize above maxSize) is simply empty.
    return query


# -- reading rows ----------------------------------------------------------------------


# What MediaInfo (and a page's cursor) reads of a row: a listing loads only these, so the
# worker's bookkeeping columns (lease, queue and retry times, crashes, upload id) cost a
# page nothing.
_INFO_COLUMNS = (
    "pk",
    "tenant_id",
    "media_id",
    "message_id",
    "session",
    "message_type",
    "mime_type",
    "file_length",
    "sender",
    "sender_lid",
    "caption",
    "filename",
    "event_id",
    "strategy",
    "persisted",
    "s3_url",
    "bucket",
    "object_key",
    "sha256",
    "size",
    "status",
    "attempts",
    "last_error",
    "received_at",
    "message_at",
    "archived_at",
    "voice_note",
    "chat",
    "is_group",
    "from_me",
    "sender_name",
    "width",
    "height",
    "duration_seconds",
    "pages",
    "renditions",
    "render_state",
    "render_error",
    "verified_at",
)


def search(
    session: Session, *, tenant_id: int | None, query: MediaQuery, info_only: bool = False
) -> list[Media]:
    """One page of rows matching ``query``, newest first unless asc; ``info_only`` loads only
    what MediaInfo shows (reading another attribute of those rows then raises).

    The order is (received_at, pk), immutable and unique, so keyset paging never skips or
    repeats a row; every filter's index ends in those columns, so a page is one index range.
    """
    stmt = select(Media)
    if info_only:
        stmt = stmt.options(load_only(*[getattr(Media, c) for c in _INFO_COLUMNS], raiseload=True))
    if tenant_id is not None:
        stmt = stmt.where(Media.tenant_id == tenant_id)
    for column, value in (
        (Media.session, query.session),
        (Media.status, query.status),
        (Media.message_type, query.type),
        (Media.message_id, query.message_id),
        (Media.persisted, query.persisted),
        (Media.chat, query.chat),
        (Media.is_group, query.is_group),
        (Media.from_me, query.from_me),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.mime_type is not None:
        if query.mime_type.endswith("/"):
            stmt = stmt.where(col(Media.mime_type).like(query.mime_type + "%"))
        else:
            stmt = stmt.where(Media.mime_type == query.mime_type)
    if query.sender is not None:
        stmt = stmt.where(
            or_(col(Media.sender) == query.sender, col(Media.sender_lid) == query.sender)
        )
    if query.since is not None:
        stmt = stmt.where(col(Media.received_at) >= query.since)
    if query.until is not None:
        stmt = stmt.where(col(Media.received_at) < query.until)
    if query.min_size is not None:
        stmt = stmt.where(col(Media.file_length) >= query.min_size)
    if query.max_size is not None:
        stmt = stmt.where(col(Media.file_length) <= query.max_size)
    ascending = query.order == "asc"
    position = tuple_(col(Media.received_at), col(Media.pk))
    if query.after is not None:
        # Bind through the column's type so the time compares as stored (naive UTC).
        mark = tuple_(literal(query.after[0], UTCDateTime()), literal(query.after[1]))
        stmt = stmt.where(position > mark if ascending else position < mark)
    if ascending:
        stmt = stmt.order_by(col(Media.received_at).asc(), col(Media.pk).asc())
    else:
        stmt = stmt.order_by(col(Media.received_at).desc(), col(Media.pk).desc())
    return list(session.exec(stmt.limit(query.limit)))


def list_media(
    session: Session,
    *,
    tenant_id: int | None,
    session_name: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[Media]:
    """Newest rows first, for the CLI and the dev demo."""
    query = MediaQuery(session=session_name, status=status, limit=limit)
    return search(session, tenant_id=tenant_id, query=query)


def get_row(session: Session, *, pk: int) -> Media | None:
    return session.get(Media, pk)


def get_media(session: Session, *, tenant_id: int, media_id: str) -> Media | None:
    return session.exec(
        select(Media).where(Media.tenant_id == tenant_id, Media.media_id == media_id)
    ).first()


def rows_with_id(session: Session, *, tenant_id: int | None, media_id: str) -> list[Media]:
    """The rows of ``media_id``: one per tenant that has it (or the tenant's one)."""
    query = select(Media).where(Media.media_id == media_id)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(Media.tenant_id)).limit(100)))


def missing_ids(session: Session, *, tenant_id: int | None, media_ids: Iterable[str]) -> list[str]:
    """Those of ``media_ids`` that name no row (of the tenant, or of any tenant), in order."""
    wanted = list(dict.fromkeys(media_ids))
    query = select(Media.media_id).where(col(Media.media_id).in_(wanted))
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    found = set(session.exec(query))
    return [media_id for media_id in wanted if media_id not in found]


def stuck(
    session: Session, *, tenant_id: int | None, now: datetime, older_than: timedelta, limit: int
) -> list[Media]:
    """Rows not moving: pending for longer than ``older_than``, or held by an expired lease."""
    moving = or_(
        and_(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.received_at) < now - older_than,
        ),
        and_(Media.status == Status.ARCHIVING.value, col(Media.lease_until) < now),
    )
    query = select(Media).where(moving)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(Media.received_at)).limit(limit)))


def archived_in_buckets(
    session: Session, *, tenant_id: int | None, after_pk: int, limit: int
) -> list[Media]:
    """Archived rows that we wrote to a bucket ourselves, in pk order (for reconcile)."""
    query = select(Media).where(
        Media.status == Status.ARCHIVED.value,
        col(Media.object_key).is_not(None),
        col(Media.pk) > after_pk,
    )
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(Media.pk)).limit(limit)))
