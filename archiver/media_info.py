"""The public JSON shape of a media row: Titan's MediaInfo fields plus our archive fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from archiver.tables import Media


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def media_info(row: Media, *, tenant: str) -> dict[str, Any]:
    return {
        "id": row.media_id,
        "messageId": row.message_id,
        "mimeType": row.mime_type,
        "fileLength": row.file_length,
        "persisted": row.persisted,
        "s3Url": row.s3_url if row.persisted else None,
        "session": row.session,
        "tenant": tenant,
        "bucket": row.bucket,
        "key": row.object_key,
        "sha256": row.sha256,
        "size": row.size,
        "type": row.message_type,
        "sender": row.sender,
        "senderLid": row.sender_lid,
        "caption": row.caption,
        "filename": row.filename,
        "eventId": row.event_id,
        "strategy": row.strategy,
        "status": row.status,
        "attempts": row.attempts,
        "lastError": row.last_error,
        "receivedAt": _iso(row.received_at),
        "messageAt": _iso(row.message_at),
        "archivedAt": _iso(row.archived_at),
    }


def _nullable(kind: str, **extra: object) -> dict[str, object]:
    return {"type": [kind, "null"], **extra}


# The JSON Schema of media_info()'s answer, for the OpenAPI document.
MEDIA_INFO_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["id", "session", "tenant", "status", "persisted", "attempts", "receivedAt"],
    "properties": {
        "id": {"type": "string", "description": "Titan's mediaId"},
        "messageId": _nullable("string"),
        "mimeType": _nullable("string"),
        "fileLength": _nullable("integer"),
        "persisted": {"type": "boolean"},
        "s3Url": _nullable("string", description="s3://bucket/key, or Titan's URL; not a link"),
        "session": {"type": "string"},
        "tenant": {"type": "string"},
        "bucket": _nullable("string"),
        "key": _nullable("string"),
        "sha256": _nullable("string"),
        "size": _nullable("integer"),
        "type": {"type": "string"},
        "sender": _nullable("string"),
        "senderLid": _nullable("string"),
        "caption": _nullable("string"),
        "filename": _nullable("string"),
        "eventId": _nullable("string"),
        "strategy": {"type": "string", "enum": ["download", "persist", "auto"]},
        "status": {"type": "string"},
        "attempts": {"type": "integer"},
        "lastError": _nullable("string"),
        "receivedAt": {"type": "string", "format": "date-time"},
        "messageAt": _nullable("string", format="date-time"),
        "archivedAt": _nullable("string", format="date-time"),
    },
}
