"""The media query: every filter defined once, parsed strictly, for the API, the CLI and OpenAPI.

``parse_query`` turns raw string parameters into a ``MediaQuery`` or raises PayloadError
whose message starts with the offending parameter's name.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from archiver.envelope import MEDIA_TYPES, SESSION_RE
from archiver.errors import PayloadError
from archiver.tables import Status

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_MIME_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/([a-z0-9][a-z0-9!#$&^_.+-]*)?$")


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
        {"type": "string", "maxLength": 255},
        "Exact MIME type (image/jpeg), or a prefix ending in '/' (image/).",
    ),
    Filter("messageId", {"type": "string", "maxLength": 255}, "WhatsApp message id."),
    Filter("sender", {"type": "string", "maxLength": 255}, "Sender's phone number or lid."),
    Filter("persisted", {"type": "boolean"}, "Whether the file is in the tenant's bucket."),
    Filter("since", {"type": "string", "format": "date-time"}, "Received at or after (ISO 8601)."),
    Filter("until", {"type": "string", "format": "date-time"}, "Received before (ISO 8601)."),
    Filter("minSize", {"type": "integer", "minimum": 0}, "Smallest fileLength in bytes."),
    Filter("maxSize", {"type": "integer", "minimum": 0}, "Largest fileLength in bytes."),
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
    Filter("cursor", {"type": "string", "maxLength": 200}, "nextCursor of the previous page."),
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
    persisted: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_size: int | None = None
    max_size: int | None = None
    order: str = "desc"
    limit: int = DEFAULT_LIMIT
    after_pk: int | None = None  # decoded cursor
    tenant: str | None = None


def encode_cursor(pk: int, order: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{order}:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise PayloadError("cursor: not a cursor this API issued") from exc
    parts = text.split(":")
    if len(parts) != 3 or parts[0] != "v1" or not parts[2].isdigit() or len(parts[2]) > 18:
        raise PayloadError("cursor: not a cursor this API issued")
    if parts[1] != order:
        raise PayloadError("cursor: issued for the other sort order")
    return int(parts[2])


def _text(params: Mapping[str, str], name: str, limit: int = 255) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not value or len(value) > limit or any(ord(c) < 0x20 for c in value):
        raise PayloadError(f"{name}: must be 1 to {limit} printable characters")
    return value


def _choice(params: Mapping[str, str], name: str, allowed: set[str] | frozenset[str]) -> str | None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise PayloadError(f"{name}: must be one of {', '.join(sorted(allowed))}")
    return value


def _integer(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise PayloadError(f"{name}: must be an integer from {low} to {high}")
    return int(value)


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise PayloadError(
            f"{name}: must be an ISO 8601 date-time, e.g. 2025-01-15T10:30:00Z"
        ) from exc
    if not 1970 <= parsed.year <= 9998:
        raise PayloadError(f"{name}: year out of range")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


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
    persisted = _choice(params, "persisted", {"true", "false"})
    order = _choice(params, "order", {"asc", "desc"}) or "desc"
    big = 2**53
    query = MediaQuery(
        session=session,
        status=_choice(params, "status", {s.value for s in Status}),
        type=_choice(params, "type", MEDIA_TYPES),
        mime_type=mime,
        message_id=_text(params, "messageId"),
        sender=_text(params, "sender"),
        persisted=None if persisted is None else persisted == "true",
        since=_time(params, "since"),
        until=_time(params, "until"),
        min_size=_integer(params, "minSize", 0, big),
        max_size=_integer(params, "maxSize", 0, big),
        order=order,
        limit=_integer(params, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT,
        after_pk=decode_cursor(params["cursor"], order) if params.get("cursor") else None,
        tenant=tenant,
    )
    if query.since and query.until and query.since >= query.until:
        raise PayloadError("until: must be later than since")
    if (
        query.min_size is not None
        and query.max_size is not None
        and query.min_size > query.max_size
    ):
        raise PayloadError("maxSize: must not be smaller than minSize")
    return query
