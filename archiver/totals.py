"""Rows and bytes of the archive per (tenant, status, type), without counting the table.

Triggers on ``media`` (migration 0016) keep ``media_totals`` exact: on SQLite directly, on
PostgreSQL by appending each statement's net change to ``media_total_deltas``, which
``fold`` moves into ``media_totals`` (the beat's dispatcher calls it every few seconds).
``read`` adds both tables in one statement: exact at any moment, whether folded or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, literal, text, union_all
from sqlalchemy import select as core_select
from sqlmodel import Session, col

from archiver.db import session_scope
from archiver.tables import MediaTotal, MediaTotalDelta


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


def fold(engine: Engine, *, limit: int = 100_000) -> int:
    """Fold pending deltas into the totals (PostgreSQL; nothing to do on SQLite); returns how
    many (tenant, status, type) totals changed."""
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
    return changed
