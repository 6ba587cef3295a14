"""Renditions of an archived file (pure): which kinds a file gets, where they live in the
tenant's bucket, and how the row keeps them.

A rendition sits beside its original, under the original's key plus a fixed suffix:
``<key>.thumb.webp`` (a thumbnail of an image or sticker, a video's poster frame, a PDF's
first page) and ``<key>.m4a`` (AAC audio of an Ogg/Opus voice note, which Safari plays).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

THUMBNAIL = "thumbnail"
AUDIO = "audio"
KINDS = (THUMBNAIL, AUDIO)
SUFFIXES = {THUMBNAIL: ".thumb.webp", AUDIO: ".m4a"}
MIME_TYPES = {THUMBNAIL: "image/webp", AUDIO: "audio/mp4"}
THUMBNAIL_EDGE = 320  # pixels on the long side

_RENDERED_TYPES = frozenset({"image", "sticker", "video", "audio"})


@dataclass(frozen=True)
class Rendition:
    kind: str
    mime_type: str
    key: str
    size: int
    sha256: str


def renderable(message_type: str, mime_type: str | None) -> bool:
    """Whether a file of this type gets renditions (or facts: a duration, a page count)."""
    if message_type in _RENDERED_TYPES:
        return True
    return (mime_type or "").split(";")[0].strip().lower() == "application/pdf"


def located(
    *, object_key: str | None, s3_url: str | None, bucket: str | None, tenant_bucket: str
) -> tuple[str, str] | None:
    """(bucket, key) of an archived file in the tenant's bucket: the worker's object, or what
    Titan persisted there (its s3Url); None for a file stored anywhere else."""
    from archiver.infra.buckets import key_in_bucket

    where = bucket or tenant_bucket
    if object_key:
        return where, object_key
    key = key_in_bucket(s3_url, bucket=where) if s3_url else None
    return (where, key) if key else None


def key_for(object_key: str, kind: str) -> str:
    """Where rendition ``kind`` of the object at ``object_key`` lives."""
    return object_key + SUFFIXES[kind]


def needs_audio(mime_type: str | None) -> bool:
    """Ogg (WhatsApp's Opus voice notes): Safari and iOS play none of it."""
    base = (mime_type or "").split(";")[0].strip().lower()
    return base in ("audio/ogg", "audio/opus", "application/ogg")


def dumps(renditions: list[Rendition]) -> str | None:
    return json.dumps([asdict(r) for r in renditions], separators=(",", ":")) or None


def loads(text: str | None) -> list[Rendition]:
    """The row's renditions; [] for none or for anything unreadable."""
    if not text:
        return []
    try:
        items = json.loads(text)
        return [Rendition(**item) for item in items if isinstance(item, dict)]
    except (ValueError, TypeError):
        return []


def keys(text: str | None) -> list[str]:
    """The bucket keys of a row's renditions (what erasure deletes with the original)."""
    return [r.key for r in loads(text)]


def find(text: str | None, kind: str) -> Rendition | None:
    return next((r for r in loads(text) if r.kind == kind), None)


def public(text: str | None) -> list[dict[str, Any]]:
    """The API's ``renditions``: kind, MIME type and size of each."""
    return [{"kind": r.kind, "mimeType": r.mime_type, "size": r.size} for r in loads(text)]
