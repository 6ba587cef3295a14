"""Figures as people read them, for the CLI and the dashboard."""

from __future__ import annotations

DASH = "\u2013"


def age(seconds: float | None, *, compact: bool = False) -> str:
    """``90 s`` / ``12 min`` / ``5.0 h`` / ``3.2 days`` (``compact``: ``90s``, ``12m``, ...)."""
    if seconds is None:
        return DASH
    units = ("s", "m", "h", "d") if compact else (" s", " min", " h", " days")
    if seconds < 120:
        return f"{seconds:.0f}{units[0]}"
    if seconds < 7200:
        return f"{seconds / 60:.0f}{units[1]}"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}{units[2]}"
    return f"{seconds / 86400:.1f}{units[3]}"


def size(value: int | None) -> str:
    """``512 B`` / ``1.5 KB`` / ``12.3 MB`` (binary multiples)."""
    if value is None:
        return DASH
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"


def clock(seconds: float | None) -> str:
    """A media length as a player shows it: ``0:04`` / ``12:30`` / ``1:02:03``."""
    if seconds is None:
        return DASH
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
