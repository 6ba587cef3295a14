"""The dashboard's filters: how values show in its pages (Jinja filters), and the media
grid's filter form as the query API's parameters (the same query code reads both)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from jinja2 import Environment

from archiver import humanize
from archiver.errors import PayloadError
from archiver.media import renditions
from archiver.tables import Media

PAGE_SIZE = 48


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "\u2013"


def title(row: Media) -> str:
    """What a tile or detail page is called: its file name or caption, else its type, who
    sent it and when ("Image from Maria, 2026-11-23 10:31"), never a byte count."""
    if row.filename or row.caption:
        return (row.filename or row.caption or "")[:120]
    kind = "Voice note" if row.voice_note else row.message_type.capitalize()
    who = "you" if row.from_me else (row.sender_name or row.sender)
    moment = row.message_at or row.received_at
    parts = [kind if who is None else f"{kind} from {who}"]
    if moment is not None:
        parts.append(moment.strftime("%Y-%m-%d %H:%M"))
    return ", ".join(parts)


def conversation(row: Media) -> str | None:
    """The conversation as a person reads it: "group 1203...@g.us" or the contact."""
    if row.chat is None:
        return None
    return f"group {row.chat}" if row.is_group else row.chat


def install(env: Environment) -> None:
    """Give the templates these filters."""
    env.filters["bytes"] = humanize.size
    env.filters["age"] = humanize.age
    env.filters["when"] = when
    env.filters["title"] = title
    env.filters["conversation"] = conversation
    env.filters["rendition"] = lambda row, kind: renditions.find(row.renditions, kind)
    env.filters["duration"] = humanize.clock


def grid_query(values: Mapping[str, str], *, admin: bool) -> tuple[dict[str, str], dict[str, str]]:
    """(the filter form's values, the query API parameters they mean)."""
    form = {k: v.strip() for k, v in values.items() if v.strip()}
    params: dict[str, str] = {}
    for name in ("session", "type", "status", "sender", "chat", "isGroup", "fromMe", "cursor"):
        if name in form:
            params[name] = form[name]
    if admin and "tenant" in form:
        params["tenant"] = form["tenant"]
    for name, field in (("from", "since"), ("to", "until")):
        if name in form:
            try:
                day = datetime.strptime(form[name], "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError as exc:
                raise PayloadError(f"{name}: a date as YYYY-MM-DD") from exc
            if name == "to":
                day += timedelta(days=1)  # through the end of that day
            params[field] = day.isoformat().replace("+00:00", "Z")
    for name, field in (("minKb", "minSize"), ("maxKb", "maxSize")):
        if name in form:
            try:
                params[field] = str(int(float(form[name]) * 1024))
            except ValueError as exc:
                raise PayloadError(f"{name}: a size in KB") from exc
    params["limit"] = str(PAGE_SIZE)
    return form, params
