"""Deterministic S3 object keys: the same media item always maps to the same key.

The template may use ``{tenant}``, ``{session}``, ``{date}`` (YYYY-MM-DD), ``{year}``,
``{month}``, ``{day}``, ``{media_id}``, ``{ext}`` and ``{chat}`` (the conversation: a group's
id or the contact; ``unknown`` where Titan did not say). Every value is escaped so that
no opaque id can add a path segment, climb out of the prefix, or smuggle control
characters into a key.
"""

from __future__ import annotations

import string
from datetime import datetime
from urllib.parse import quote

from archiver.errors import ConfigError

DEFAULT_TEMPLATE = "{tenant}/{session}/{date}/{media_id}{ext}"
FIELDS = frozenset({"tenant", "session", "date", "year", "month", "day", "media_id", "ext", "chat"})
UNKNOWN_CHAT = "unknown"

# The common WhatsApp media types; anything else gets a generic ".bin".
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "video/quicktime": ".mov",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "application/msword": ".doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
}


def validate_template(template: str) -> str:
    """Return ``template`` if it names only known fields and includes ``{media_id}``."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"object key template is malformed: {exc}") from exc
    unknown = names - FIELDS
    if unknown:
        raise ConfigError(f"object key template uses unknown fields: {sorted(unknown)}")
    if "media_id" not in names:
        raise ConfigError("object key template must include {media_id} so keys never collide")
    if template.startswith("/"):
        raise ConfigError("object key template must not start with '/'")
    return template


def extension(mime_type: str | None) -> str:
    """Return the file extension (with its dot) for a MIME type."""
    return _EXTENSIONS.get((mime_type or "").lower(), ".bin")


def segment(value: str) -> str:
    """Escape one value so it is a single, safe key segment."""
    escaped = quote(value, safe="-_.~@+")
    # "." and ".." are path navigation in many S3 tools and file systems.
    return escaped.replace(".", "%2E") if set(escaped) <= {"."} else escaped


def object_key(
    template: str,
    *,
    prefix: str,
    tenant: str,
    session: str,
    media_id: str,
    mime_type: str | None,
    when: datetime,
    chat: str | None = None,
) -> str:
    """Build the object key of one media item; same inputs, same key."""
    key = template.format(
        tenant=segment(tenant),
        session=segment(session),
        date=when.strftime("%Y-%m-%d"),
        year=when.strftime("%Y"),
        month=when.strftime("%m"),
        day=when.strftime("%d"),
        media_id=segment(media_id),
        ext=extension(mime_type),
        chat=segment(chat or UNKNOWN_CHAT),
    )
    return normalise_prefix(prefix) + key


def normalise_prefix(prefix: str) -> str:
    """Return ``prefix`` as ``a/b/`` (or empty), whatever slashes it was given with."""
    parts = [segment(p) for p in prefix.split("/") if p]
    return "/".join(parts) + "/" if parts else ""
