"""maintained totals of the media table: rows and bytes per (tenant, status, type)

Revision ID: 0016
Revises: 0015

``/api/stats``, the dashboard's overview, ``status`` and the backlog gauges counted the
whole media table on every request and scrape (seconds at ten million rows). Triggers on
``media`` now keep ``media_totals`` exact on every insert, delete and update that moves a
row between statuses, types or sizes:

- PostgreSQL: one statement-level trigger per operation (transition tables) appends the
  statement's net change to ``media_total_deltas``: concurrent writers never wait on a
  counter row (an ``UPDATE`` of a hot counter would serialise the receiver's group
  commits). The beat folds the deltas into ``media_totals`` (archiver/reporting/totals.py); readers
  add both tables in one statement, so a count is exact whenever it is read.
- SQLite (one writer at a time): row-level triggers update ``media_totals`` directly.

The bytes of a row are what the stats always summed: its archived size, else Titan's
announced fileLength, else 0. The tables are filled from the existing rows here.
"""

# The SQL here is assembled from this file's own constants only (no input reaches it).
# ruff: noqa: S608
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BYTES = "coalesce({0}.size, {0}.file_length, 0)"

_PG_FUNCTIONS = {
    "insert": f"""
        INSERT INTO media_total_deltas (tenant_id, status, message_type, rows, bytes)
        SELECT tenant_id, status, message_type, count(*), sum({_BYTES.format("n")})
        FROM new_rows n GROUP BY tenant_id, status, message_type;""",
    "delete": f"""
        INSERT INTO media_total_deltas (tenant_id, status, message_type, rows, bytes)
        SELECT tenant_id, status, message_type, -count(*), -sum({_BYTES.format("o")})
        FROM old_rows o GROUP BY tenant_id, status, message_type;""",
    "update": f"""
        INSERT INTO media_total_deltas (tenant_id, status, message_type, rows, bytes)
        SELECT tenant_id, status, message_type, sum(n), sum(b) FROM (
            SELECT tenant_id, status, message_type, 1 AS n, {_BYTES.format("n")} AS b
            FROM new_rows n
            UNION ALL
            SELECT tenant_id, status, message_type, -1, -{_BYTES.format("o")}
            FROM old_rows o
        ) AS moved
        GROUP BY tenant_id, status, message_type
        HAVING sum(n) <> 0 OR sum(b) <> 0;""",
}
_PG_TRANSITIONS = {
    "insert": "NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
}


def _sqlite_upsert(row: str, sign: str) -> str:
    return (
        "INSERT INTO media_totals (tenant_id, status, message_type, rows, bytes) "
        f"VALUES ({row}.tenant_id, {row}.status, {row}.message_type, {sign}1, "
        f"{sign}{_BYTES.format(row)}) "
        "ON CONFLICT (tenant_id, status, message_type) DO UPDATE SET "
        "rows = rows + excluded.rows, bytes = bytes + excluded.bytes;"
    )


def upgrade() -> None:
    op.create_table(
        "media_totals",
        sa.Column("tenant_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "status", "message_type"),
    )
    op.create_table(
        "media_total_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO media_totals (tenant_id, status, message_type, rows, bytes) "
        f"SELECT tenant_id, status, message_type, count(*), sum({_BYTES.format('media')}) "
        "FROM media GROUP BY tenant_id, status, message_type"
    )
    if op.get_bind().dialect.name == "postgresql":
        for operation, body in _PG_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION media_totals_{operation}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER media_totals_{operation} AFTER {operation.upper()} ON media "
                f"REFERENCING {_PG_TRANSITIONS[operation]} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION media_totals_{operation}()"
            )
        return
    op.execute(
        "CREATE TRIGGER media_totals_insert AFTER INSERT ON media BEGIN "
        f"{_sqlite_upsert('new', '+')} END"
    )
    op.execute(
        "CREATE TRIGGER media_totals_delete AFTER DELETE ON media BEGIN "
        f"{_sqlite_upsert('old', '-')} END"
    )
    op.execute(
        "CREATE TRIGGER media_totals_update AFTER UPDATE OF "
        "tenant_id, status, message_type, size, file_length ON media "
        "WHEN old.tenant_id IS NOT new.tenant_id OR old.status IS NOT new.status "
        "OR old.message_type IS NOT new.message_type "
        f"OR {_BYTES.format('old')} IS NOT {_BYTES.format('new')} BEGIN "
        f"{_sqlite_upsert('old', '-')} {_sqlite_upsert('new', '+')} END"
    )


def downgrade() -> None:
    for operation in ("insert", "delete", "update"):
        op.execute(
            f"DROP TRIGGER IF EXISTS media_totals_{operation}"
            + (" ON media" if op.get_bind().dialect.name == "postgresql" else "")
        )
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS media_totals_{operation}()")
    op.drop_table("media_total_deltas")
    op.drop_table("media_totals")
