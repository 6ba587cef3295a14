"""Rows and bytes of the archive per (tenant, status, type), and per conversation, without
counting the table.

Triggers on ``media`` (migrations 0016 and 0019) keep ``media_totals`` and ``media_chats``
exact: on SQLite directly, on PostgreSQL by appending each statement's net change to
``media_total_deltas`` / ``media_chat_deltas``, which ``fold`` moves in (the beat's
dispatcher calls it every few seconds). ``read`` and ``chats`` add both tables in one
statement: exact at any moment, whether folded or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, String, func, literal, text, union_all
from sqlalchemy import select as core_select
from sqlmodel import Session, col

from archiver.infra.db import session_scope
from archiver.tables import MediaTotal, MediaTotalDelta, UTCDateTime


@dataclass(frozen=True)
class Total:
    tenant_id: int
    status: str
    message_type: str
    rows: int
    bytes: int


def read(session: Session, *, tenant_id: int | None = None) -> list[Total]:
    """Every non-empty (tenant, status, type) total, of one tenant or of all."""
    parts: list[Any] = []
    for table in (MediaTotal, MediaTotalDelta):
        part: Any = core_select(
            col(table.tenant_id).label("tenant_id"),
            col(table.status).label("status"),
            col(table.message_type).label("message_type"),
            col(table.rows).label("rows"),
            col(table.bytes).label("bytes"),
        )
        if tenant_id is not None:
            part = part.where(col(table.tenant_id) == literal(tenant_id))
        parts.append(part)
    both = union_all(*parts).subquery()
    query = core_select(
        both.c.tenant_id,
        both.c.status,
        both.c.message_type,
        func.sum(both.c.rows),
        func.sum(both.c.bytes),
    ).group_by(both.c.tenant_id, both.c.status, both.c.message_type)
    return [
        Total(int(t), str(s), str(m), int(n), int(b or 0))
        for t, s, m, n, b in session.execute(query)
        if n
    ]


# Moves up to :limit deltas, oldest first, into the totals in one statement: a delta is
# deleted and added in the same transaction, so a concurrent read sees it exactly once, and
# two folds at once never move a delta twice (the second's DELETE skips what the first took).
_FOLD = text(
    """
    WITH moved AS (
        DELETE FROM media_total_deltas
        WHERE id IN (SELECT id FROM media_total_deltas ORDER BY id LIMIT :limit)
        RETURNING tenant_id, status, message_type, rows, bytes
    ), summed AS (
        SELECT tenant_id, status, message_type, sum(rows) AS rows, sum(bytes) AS bytes
        FROM moved GROUP BY tenant_id, status, message_type
    ), folded AS (
        INSERT INTO media_totals (tenant_id, status, message_type, rows, bytes)
        SELECT tenant_id, status, message_type, rows, bytes FROM summed
        ORDER BY tenant_id, status, message_type
        ON CONFLICT (tenant_id, status, message_type) DO UPDATE
        SET rows = media_totals.rows + excluded.rows, bytes = media_totals.bytes + excluded.bytes
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM summed), (SELECT count(*) FROM folded)
    """
)


# The same for conversations; answers the conversations rows left (their last activity and
# name are looked up again, and those left empty removed, in the same transaction).
_FOLD_CHATS = text(
    """
    WITH moved AS (
        DELETE FROM media_chat_deltas
        WHERE id IN (SELECT id FROM media_chat_deltas ORDER BY id LIMIT :limit)
        RETURNING tenant_id, chat, rows, bytes, last_at, name, named_at, is_group, deleted
    ), summed AS (
        SELECT tenant_id, chat, sum(rows) AS rows, sum(bytes) AS bytes, max(last_at) AS last_at,
               (array_agg(name ORDER BY named_at DESC, name DESC)
                   FILTER (WHERE named_at IS NOT NULL))[1] AS name,
               max(named_at) AS named_at,
               bool_or(is_group) AS is_group, bool_or(deleted) AS deleted
        FROM moved GROUP BY tenant_id, chat
    ), folded AS (
        INSERT INTO media_chats AS c
            (tenant_id, chat, rows, bytes, last_at, name, named_at, is_group)
        SELECT tenant_id, chat, rows, bytes, last_at, name, named_at, is_group FROM summed
        ORDER BY tenant_id, chat
        ON CONFLICT (tenant_id, chat) DO UPDATE
        SET rows = c.rows + excluded.rows,
            bytes = c.bytes + excluded.bytes,
            last_at = greatest(c.last_at, excluded.last_at),
            name = CASE WHEN excluded.named_at IS NOT NULL AND (c.named_at IS NULL
                        OR (excluded.named_at, excluded.name) > (c.named_at, c.name))
                   THEN excluded.name ELSE c.name END,
            named_at = greatest(c.named_at, excluded.named_at),
            is_group = c.is_group OR excluded.is_group
    )
    SELECT (SELECT count(*) FROM summed), tenant_id, chat FROM summed WHERE deleted
    UNION ALL SELECT (SELECT count(*) FROM summed), NULL, NULL
    """
)
_RELOOK = text(
    """
    UPDATE media_chats c SET
        last_at = (
            SELECT max(m.received_at) FROM media m
            WHERE m.tenant_id = c.tenant_id AND m.chat = c.chat
        ),
        (name, named_at) = (
            SELECT m.sender_name, m.received_at FROM media m
            WHERE m.tenant_id = c.tenant_id AND m.chat = c.chat AND NOT c.is_group
              AND m.is_group IS NOT TRUE AND m.from_me IS NOT TRUE
              AND m.sender_name IS NOT NULL
            ORDER BY m.received_at DESC, m.sender_name DESC LIMIT 1
        )
    WHERE (tenant_id, chat) IN (
        SELECT * FROM unnest(CAST(:tenants AS integer[]), CAST(:chats AS text[]))
    )
    """
)
_DROP_EMPTY = text(
    """
    DELETE FROM media_chats WHERE rows = 0 AND (tenant_id, chat) IN (
        SELECT * FROM unnest(CAST(:tenants AS integer[]), CAST(:chats AS text[]))
    )
    """
)


def fold(engine: Engine, *, limit: int = 100_000) -> int:
    """Fold pending deltas into the totals and the conversations (PostgreSQL; nothing to do
    on SQLite); returns how many totals and conversations changed."""
    if engine.dialect.name != "postgresql":
        return 0
    changed = 0
    with session_scope(engine) as session:
        for _ in range(10):  # at most 10 x limit deltas per call
            groups, _ = session.execute(_FOLD, {"limit": limit}).one()
            changed += int(groups)
            if not groups:
                break
            session.commit()
        for _ in range(10):
            answer = session.execute(_FOLD_CHATS, {"limit": limit}).all()
            groups = int(answer[0][0]) if answer else 0
            left = [(int(t), str(c)) for _, t, c in answer if t is not None]
            if left:
                keys = {"tenants": [t for t, _ in left], "chats": [c for _, c in left]}
                session.execute(_RELOOK, keys)
                session.execute(_DROP_EMPTY, keys)
            changed += groups
            session.commit()
            if not groups:
                break
    return changed


@dataclass(frozen=True)
class ChatSummary:
    tenant_id: int
    chat: str
    rows: int
    bytes: int
    last_at: datetime | None
    name: str | None
    is_group: bool


# The newest ``:limit`` conversations (ties: by chat and tenant, so a tenant's page is the
# same as its part of the admin's), from the summary's index plus the conversations with
# deltas not folded yet, all in one statement (one snapshot). A pending deletion can leave
# a summary line with no rows: ``:top`` (the limit plus the conversations pending) lines
# are read, so the page is still full.
_CHATS = """
    WITH d AS (
        SELECT tenant_id, chat, sum(rows) AS rows, sum(bytes) AS bytes, max(last_at) AS last_at,
               max(named_at) AS named_at, max(CASE WHEN is_group THEN 1 ELSE 0 END) AS is_group
        FROM media_chat_deltas {where} GROUP BY tenant_id, chat
    ), names AS (
        SELECT tenant_id, chat, name, row_number() OVER (
            PARTITION BY tenant_id, chat ORDER BY named_at DESC, name DESC
        ) AS newest
        FROM media_chat_deltas {where} {named}
    ), top AS (
        SELECT tenant_id, chat FROM media_chats {where}
        ORDER BY last_at DESC, chat DESC, tenant_id DESC LIMIT :top
    ), keys AS (
        SELECT tenant_id, chat FROM top UNION SELECT tenant_id, chat FROM d
    )
    SELECT k.tenant_id AS tenant_id, k.chat AS chat,
           coalesce(c.rows, 0) + coalesce(d.rows, 0) AS rows,
           coalesce(c.bytes, 0) + coalesce(d.bytes, 0) AS bytes,
           CASE WHEN d.last_at IS NULL THEN c.last_at
                WHEN c.last_at IS NULL OR d.last_at > c.last_at THEN d.last_at
                ELSE c.last_at END AS last_at,
           CASE WHEN d.named_at IS NULL THEN c.name
                WHEN c.named_at IS NULL OR d.named_at > c.named_at THEN n.name
                WHEN d.named_at = c.named_at AND n.name > c.name THEN n.name
                ELSE c.name END AS name,
           CASE WHEN c.is_group OR d.is_group = 1 THEN 1 ELSE 0 END AS is_group
    FROM keys k
    LEFT JOIN media_chats c ON c.tenant_id = k.tenant_id AND c.chat = k.chat
    LEFT JOIN d ON d.tenant_id = k.tenant_id AND d.chat = k.chat
    LEFT JOIN names n ON n.tenant_id = k.tenant_id AND n.chat = k.chat AND n.newest = 1
    WHERE coalesce(c.rows, 0) + coalesce(d.rows, 0) > 0
    ORDER BY last_at DESC, chat DESC, tenant_id DESC
    LIMIT :limit
"""
_PENDING_CHATS = """
    SELECT count(*) FROM (SELECT DISTINCT tenant_id, chat FROM media_chat_deltas {where}) AS p
"""


def chats(session: Session, *, tenant_id: int | None, limit: int) -> list[ChatSummary]:
    """The ``limit`` conversations with the newest media, of one tenant or of all."""
    where = "WHERE tenant_id = :tenant" if tenant_id is not None else ""
    named = ("AND" if where else "WHERE") + " named_at IS NOT NULL"
    params: dict[str, Any] = {"limit": limit}
    if tenant_id is not None:
        params["tenant"] = tenant_id
    if session.get_bind().dialect.name == "postgresql":
        # A page is a few index reads; JIT compiling the plan would cost 0.4 s.
        session.execute(text("SET LOCAL jit = off"))
    # Read before the page's statement, so the planner sees a constant limit. A fold meanwhile
    # only makes it larger than needed; a deletion meanwhile can leave the page a line short.
    pending = session.execute(text(_PENDING_CHATS.format(where=where)), params).scalar_one()
    params["top"] = limit + int(pending)
    query = text(_CHATS.format(where=where, named=named)).columns(
        tenant_id=Integer(),
        chat=String(),
        rows=BigInteger(),
        bytes=BigInteger(),
        last_at=UTCDateTime(),
        name=String(),
        is_group=Integer(),
    )
    return [
        ChatSummary(
            tenant_id=int(t),
            chat=str(c),
            rows=int(n),
            bytes=int(b or 0),
            last_at=last,
            name=name,
            is_group=bool(group),
        )
        for t, c, n, b, last, name, group in session.execute(query, params)
    ]
