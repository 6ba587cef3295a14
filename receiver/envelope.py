"""Turn a verified Titan webhook body into the one thing we act on: a media item to archive."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from archiver.errors import PayloadError
from archiver.media.recording import MediaItem
from archiver.names import (
    MAX_ID_LEN,
    MEDIA_TYPES,
    SESSION_RE,
    TYPE_ALIASES,
    VOICE_NOTE_TYPES,
    free_text,
    has_control,
    valid_text,
)

MAX_TEXT_LEN = 4096
MAX_JSON_DEPTH = 32


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode a signed body into the envelope object, or raise PayloadError."""
    try:
        doc = orjson.loads(body)  # a fifth of json.loads's time
    except orjson.JSONDecodeError:
        # What orjson refuses and json accepts (an integer wider than 64 bits, NaN) is
        # still read as before: a delivery is never refused for being unusual JSON.
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise PayloadError("body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise PayloadError("envelope must be a JSON object")
    # Nesting needs brackets: with no more than the limit in the whole body (every event
    # Titan sends has about ten), the walk over the document cannot find too deep a one.
    if body.count(b"{") + body.count(b"[") >= MAX_JSON_DEPTH and _depth(doc) > MAX_JSON_DEPTH:
        raise PayloadError("envelope is nested too deeply")
    return doc


# session.status reasons that mean the session's media calls fail until it is re-linked.
_HOLDING_REASONS = {"LOGGED_OUT": "logged out", "TEMPORARY_BAN": "temporarily banned"}


@dataclass(frozen=True)
class SessionChange:
    """A session event that holds or releases the session's media (titan-api.md section 7)."""

    session: str
    paused: bool
    reason: str


def session_change(envelope: dict[str, Any]) -> SessionChange | None:
    """``session.logged_out``, or ``session.status`` DISCONNECTED for LOGGED_OUT or
    TEMPORARY_BAN: the session is paused. ``session.status`` CONNECTED: resumed. Anything
    else (CONNECTING, a disconnect that reconnects by itself, other events): None."""
    event = envelope.get("event")
    if event not in ("session.status", "session.logged_out"):
        return None
    name = envelope.get("session")
    if not isinstance(name, str) or not SESSION_RE.match(name):
        raise PayloadError("session is missing or not a valid Titan session name")
    if event == "session.logged_out":
        return SessionChange(name, True, "logged out (session.logged_out)")
    payload = envelope.get("payload")
    if payload is None:
        payload = envelope.get("data")
    if not isinstance(payload, dict):
        return None
    status, why = payload.get("status"), payload.get("statusReason")
    if status == "CONNECTED":
        return SessionChange(name, False, "connected")
    if status == "DISCONNECTED" and isinstance(why, str) and why in _HOLDING_REASONS:
        return SessionChange(name, True, f"{_HOLDING_REASONS[why]} (session.status {why})")
    return None


MEDIA_EVENTS = frozenset({"message.received", "message.sent"})
REVOKE_EVENTS = frozenset({"message.revoked", "message.delete"})


@dataclass(frozen=True)
class Revocation:
    """A message its sender revoked or deleted (``message.revoked`` / ``message.delete``)."""

    session: str
    message_id: str
    event: str


def revocation(envelope: dict[str, Any]) -> Revocation | None:
    """The message a revoke/delete event names, or None (another event, or no message id:
    the payload's shape is not documented, so the forms seen in comparable gateways are
    read: ``revokedMessageId``, ``messageId``, ``key.id``, then ``id``)."""
    event = envelope.get("event")
    if event not in REVOKE_EVENTS:
        return None
    session = envelope.get("session")
    if not isinstance(session, str) or not SESSION_RE.match(session):
        raise PayloadError("session is missing or not a valid Titan session name")
    payload = envelope.get("payload")
    if payload is None:
        payload = envelope.get("data")
    if not isinstance(payload, dict):
        return None
    key = payload.get("key")
    candidates = (
        payload.get("revokedMessageId"),
        payload.get("messageId"),
        key.get("id") if isinstance(key, dict) else None,
        payload.get("id"),
    )
    for candidate in candidates:
        if isinstance(candidate, str | int) and not isinstance(candidate, bool) and candidate:
            return Revocation(session, _opaque_id(candidate, "message id"), str(event))
    return None


def media_item(envelope: dict[str, Any]) -> MediaItem | None:
    """Return the media item of a ``message.received`` or ``message.sent`` envelope, or None
    if there is none.

    Any other event type, and text messages, are not ours to archive: None. What the
    business's own number sent (``message.sent``) is stored with ``from_me`` true; whether
    it is archived is the tenant's capture policy (archiver/media/capture.py).
    """
    event = envelope.get("event")
    if event not in MEDIA_EVENTS:
        return None
    outgoing = event == "message.sent"
    payload = envelope.get("payload")
    if payload is None:
        payload = envelope.get("data")
    if not isinstance(payload, dict):
        raise PayloadError(f"{event} without a payload object")
    found = payload.get("media")
    media: dict[str, Any] = found if isinstance(found, dict) else {}

    def field(name: str) -> Any:
        value = payload.get(name)
        return media.get(name) if value is None else value

    media_id = field("mediaId")
    if media_id is None:
        return None
    media_id = _opaque_id(media_id, "mediaId")
    session = envelope.get("session")
    if not isinstance(session, str) or not SESSION_RE.match(session):
        raise PayloadError("session is missing or not a valid Titan session name")
    message_type = payload.get("type")
    voice_note = isinstance(message_type, str) and message_type in VOICE_NOTE_TYPES
    if isinstance(message_type, str) and message_type in TYPE_ALIASES:
        message_type = TYPE_ALIASES[message_type]
    if not isinstance(message_type, str) or message_type not in MEDIA_TYPES:
        message_type = "document" if message_type is None else _text(message_type, "type", 32)
    message_id = payload.get("id")
    return MediaItem(
        media_id=media_id,
        session=session,
        message_id=None if message_id is None else _opaque_id(message_id, "payload.id"),
        message_type=message_type or "document",
        mime_type=_mime(field("mimeType")),
        file_length=_length(field("fileLength")),
        sender=_sender(payload),
        caption=_first_text(payload, media, ("caption", "body", "text")),
        filename=_optional_text(field("filename"), "filename", 255),
        media_url=_optional_text(field("mediaUrl"), "mediaUrl", 2048),
        message_at=_unix_time(payload.get("timestamp")),
        event_id=_optional_text(envelope.get("id"), "id", MAX_ID_LEN),
        sender_lid=_sender_lid(payload),
        voice_note=voice_note,
        **_conversation(payload, outgoing=outgoing),
    )


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _opaque_id(value: Any, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not valid_text(value):
        raise PayloadError(f"{name} must be a non-empty string of at most {MAX_ID_LEN} characters")
    return value


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a string")
    if has_control(value[:limit]):
        raise PayloadError(f"{name} contains control characters or invalid Unicode")
    return value[:limit]


def _optional_text(value: Any, name: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return _text(value, name, limit)


def _first_text(
    payload: dict[str, Any], media: dict[str, Any], names: tuple[str, ...]
) -> str | None:
    for source in (payload, media):
        for name in names:
            value = source.get(name)
            if isinstance(value, str) and value:
                return free_text(value[:MAX_TEXT_LEN]) or None
    return None


_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(;.*)?")


def _mime(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(value, "mimeType", 255).strip().lower()
    if not _MIME.fullmatch(text):
        raise PayloadError("mimeType is not a MIME type")
    return text.split(";", 1)[0].strip()


def _length(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**53:
        raise PayloadError("fileLength must be a non-negative integer")
    return value


def _sender(payload: dict[str, Any]) -> str | None:
    # In groups `sender` names the participant; otherwise `from` names the person.
    for candidate in (payload.get("sender"), payload.get("from")):
        if isinstance(candidate, str) and candidate:
            return _optional_text(candidate, "sender", 255)
        if isinstance(candidate, dict):
            for key in ("phoneNumber", "lid", "id"):
                value = candidate.get(key)
                if isinstance(value, str) and value:
                    return _optional_text(value, "sender", 255)
    return None


def _conversation(payload: dict[str, Any], *, outgoing: bool = False) -> dict[str, Any]:
    """chat, is_group, from_me and sender_name, as far as Titan's payload says them.

    ``from`` is ``{id: "...@g.us"}`` for a group and ``{phoneNumber, lid, mode}`` for a
    person (titan-api.md section 3); the chat of a one-to-one message is that person, in the
    form Titan's ``mode`` names (phone number, or lid). A sent message's chat is its
    recipient (``to``, or ``chatId``) when the payload names one. Nothing is guessed: what
    the payload does not say stays None.
    """
    source = payload.get("from")
    if outgoing:
        for name in ("to", "chatId"):
            if payload.get(name):
                source = payload[name]
                break
    chat: str | None = None
    group: bool | None = None
    if isinstance(source, dict):
        group_id = source.get("id")
        if isinstance(group_id, str) and group_id.endswith("@g.us"):
            chat, group = group_id, True
        else:
            phone, lid = source.get("phoneNumber"), source.get("lid")
            preferred = (lid, phone) if source.get("mode") == "lid" else (phone, lid)
            chat = next((v for v in preferred if isinstance(v, str) and v), None)
            if chat is None and isinstance(group_id, str) and group_id:
                chat = group_id
            group = False if chat is not None else None
    elif isinstance(source, str) and source:
        chat = source
        group = True if source.endswith("@g.us") else None
    said = payload.get("isGroup")
    if isinstance(said, bool):
        group = said
    from_me = True if outgoing else payload.get("fromMe")
    if chat is not None and len(chat) > 255:
        chat = None  # not an id Titan issues; cut short it would name another chat
    return {
        "chat": _optional_text(chat, "from", 255),
        "is_group": group,
        "from_me": from_me if isinstance(from_me, bool) else None,
        "sender_name": _name(payload.get("pushName")),
    }


def _name(value: Any) -> str | None:
    """A display name as stored: free text (emoji welcome), control characters dropped."""
    if not isinstance(value, str) or not value:
        return None
    text = free_text(value[:255])
    if text.isprintable():  # nearly every name: nothing to drop
        return text
    cleaned = "".join(c for c in text if c.isprintable())
    return cleaned or None


def _sender_lid(payload: dict[str, Any]) -> str | None:
    for candidate in (payload.get("sender"), payload.get("from")):
        if (
            isinstance(candidate, dict)
            and isinstance(candidate.get("lid"), str)
            and candidate["lid"]
        ):
            return _optional_text(candidate["lid"], "sender lid", 255)
    return None


def _unix_time(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
