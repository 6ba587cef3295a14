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
