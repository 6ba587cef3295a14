"""What a tenant captures: its policy, and the one decision the receiver makes with it
(pure: no database, no I/O).

By default everything incoming is archived and outgoing media is not, which is what the
archiver always did. A tenant may also archive what its own number sends (``message.sent``
with a ``mediaId``), leave out status (stories) media and group media, allow only some
types, and cap the announced size. A delivery that is not captured is answered 200
``ignored`` with the reason, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from archiver.errors import PayloadError
from archiver.media.recording import MediaItem
from archiver.names import MEDIA_TYPES

# WhatsApp's chat for status (stories) updates.
STATUS_CHAT = "status@broadcast"

Reason = Literal["outgoing", "status", "group", "type", "size"]


class _PolicyColumns(Protocol):
    capture_outgoing: bool
    capture_status: bool
    capture_groups: bool
    capture_types: str | None
    capture_max_bytes: int | None


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    outgoing: bool = False
    status: bool = True
    groups: bool = True
    types: frozenset[str] | None = None  # None: every type
    max_bytes: int | None = None  # None: any size

    @classmethod
    def of(cls, tenant: _PolicyColumns) -> CapturePolicy:
        return cls(
            outgoing=tenant.capture_outgoing,
            status=tenant.capture_status,
            groups=tenant.capture_groups,
            types=parse_types(tenant.capture_types),
            max_bytes=tenant.capture_max_bytes,
        )


def parse_types(text: str | None) -> frozenset[str] | None:
    """A comma-separated allow-list ("image,video") as a set; None or "" means every type."""
    if text is None or not text.strip():
        return None
    types = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = sorted(types - MEDIA_TYPES)
    if unknown:
        raise PayloadError(
            f"capture-types: unknown type {unknown[0]!r} (known: {', '.join(sorted(MEDIA_TYPES))})"
        )
    return types


def format_types(types: frozenset[str] | None) -> str | None:
    return None if types is None else ",".join(sorted(types))


def not_captured(policy: CapturePolicy, item: MediaItem) -> Reason | None:
    """Why ``item`` is not archived under ``policy``, or None when it is."""
    if item.from_me and not policy.outgoing:
        return "outgoing"
    if item.chat == STATUS_CHAT and not policy.status:
        return "status"
    if item.is_group and not policy.groups:
        return "group"
    if policy.types is not None and item.message_type not in policy.types:
        return "type"
    if (
        policy.max_bytes is not None
        and item.file_length is not None
        and item.file_length > policy.max_bytes
    ):
        return "size"
    return None
