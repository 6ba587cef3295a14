"""What a valid name, opaque id and media type is: shared by the webhook parser, the query
parser and tenant records, so all three accept and refuse the same values."""

from __future__ import annotations

import re

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
# Titan's send API (and some clients) say voice/ptt and file: stored as what they are.
TYPE_ALIASES = {"ptt": "audio", "voice": "audio", "file": "document"}
VOICE_NOTE_TYPES = frozenset({"ptt", "voice"})
# A Titan session name; tenant names follow the same rule (they appear in URLs and keys).
SESSION_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
MAX_ID_LEN = 255

_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def has_control(text: str) -> bool:
    """Control characters, or lone surrogates (JSON escapes that are not Unicode text)."""
    return _CONTROL.search(text) is not None


def valid_text(text: str, *, limit: int = MAX_ID_LEN) -> bool:
    """An id, a name or a filter value: 1 to ``limit`` characters, none of them control
    characters or lone surrogates (the webhook parser, the query API and the CLI agree)."""
    return 0 < len(text) <= limit and not has_control(text)


_DROPPED = re.compile("[\x00\ud800-\udfff]")


def free_text(text: str) -> str:
    """Free text (a caption) as stored: NULs and lone surrogates dropped, newlines kept."""
    if text.isascii():  # a flag CPython keeps on the string: no scan, and no surrogates
        return text.replace("\x00", "") if "\x00" in text else text
    return _DROPPED.sub("", text) if _DROPPED.search(text) else text
