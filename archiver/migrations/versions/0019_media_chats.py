"""a maintained summary per conversation: media rows, bytes, last activity, name, group

Revision ID: 0019
Revises: 0018

The dashboard's Chats page grouped the whole media table by conversation on every view:
3.4 s at ten million rows (docs/performance.md). ``media_chats`` keeps, per (tenant,
chat), what that page shows, by the same method as ``media_totals`` (migration 0016):

- PostgreSQL: statement-level triggers append each statement's change to
  ``media_chat_deltas`` (no writer waits on a summary row); the beat folds them in
  (archiver/reporting/totals.py); readers add both in one statement.
- SQLite: row-level triggers update ``media_chats`` directly.

Rows and bytes are exact under inserts, updates and deletions. The last activity and the
name (the pushName on the contact's newest own message; ``named_at`` is that message's
time) move forward on insert; a deletion of the rows they came from looks them up again on
the ``(tenant_id, chat, received_at)`` index (on PostgreSQL when the deltas are folded). A
conversation left with no rows is removed.
"""

# The SQL here is assembled from this file's own constants only (no input reaches it).
# ruff: noqa: S608
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_BYTES = "coalesce({0}.size, {0}.file_length, 0)"
_INCOMING = "{0}.is_group IS NOT TRUE AND {0}.from_me IS NOT TRUE AND {0}.sender_name IS NOT NULL"
_NAME = "CASE WHEN " + _INCOMING + " THEN {0}.sender_name END"
_NAMED_AT = "CASE WHEN " + _INCOMING + " THEN {0}.received_at END"
_GROUP = "CASE WHEN {0}.is_group IS TRUE THEN 1 ELSE 0 END"
_COLUMNS = "tenant_id, chat, rows, bytes, last_at, name, named_at, is_group, deleted"
# The contact's name on its newest own message (ties: the greatest name), over ``{0}``.
_PG_NEWEST_NAME = (
    "(array_agg({0}.sender_name ORDER BY {0}.received_at DESC, {0}.sender_name DESC) "
    "FILTER (WHERE " + _INCOMING + "))[1]"
)

_PG_FUNCTIONS = {
    "insert": f"""
        INSERT INTO media_chat_deltas ({_COLUMNS})
        SELECT tenant_id, chat, count(*), sum({_BYTES.format("n")}), max(received_at),
               {_PG_NEWEST_NAME.format("n")}, max({_NAMED_AT.format("n")}),
               max({_GROUP.format("n")}) = 1, false
        FROM new_rows n WHERE chat IS NOT NULL GROUP BY tenant_id, chat;""",
    "delete": f"""
        INSERT INTO media_chat_deltas ({_COLUMNS})
        SELECT tenant_id, chat, -count(*), -sum({_BYTES.format("o")}), NULL, NULL, NULL, false,
               true
        FROM old_rows o WHERE chat IS NOT NULL GROUP BY tenant_id, chat;""",
    "update": f"""
        INSERT INTO media_chat_deltas ({_COLUMNS})
        SELECT tenant_id, chat, sum(n), sum(b), NULL, NULL, NULL, false, sum(n) < 0 FROM (
            SELECT tenant_id, chat, 1 AS n, {_BYTES.format("n")} AS b
            FROM new_rows n WHERE chat IS NOT NULL
            UNION ALL
            SELECT tenant_id, chat, -1, -{_BYTES.format("o")}
            FROM old_rows o WHERE chat IS NOT NULL
        ) AS moved
        GROUP BY tenant_id, chat
        HAVING sum(n) <> 0 OR sum(b) <> 0;""",
}
_PG_TRANSITIONS = {
    "insert": "NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
}


_NEWER_NAME = (
    "excluded.named_at IS NOT NULL AND (named_at IS NULL OR excluded.named_at > named_at "
    "OR (excluded.named_at = named_at AND excluded.name > name))"
)


def _sqlite_add(row: str) -> str:
    return (
        "INSERT INTO media_chats "
        "(tenant_id, chat, rows, bytes, last_at, name, named_at, is_group) "
        f"SELECT {row}.tenant_id, {row}.chat, 1, {_BYTES.format(row)}, {row}.received_at, "
        f"{_NAME.format(row)}, {_NAMED_AT.format(row)}, {_GROUP.format(row)} "
        f"WHERE {row}.chat IS NOT NULL "
        "ON CONFLICT (tenant_id, chat) DO UPDATE SET rows = rows + 1, "
        "bytes = bytes + excluded.bytes, "
        "last_at = CASE WHEN last_at IS NULL OR excluded.last_at > last_at "
        "THEN excluded.last_at ELSE last_at END, "
        f"name = CASE WHEN {_NEWER_NAME} THEN excluded.name ELSE name END, "
        f"named_at = CASE WHEN {_NEWER_NAME} THEN excluded.named_at ELSE named_at END, "
        "is_group = max(is_group, excluded.is_group);"
    )


def _newest_named(row: str, column: str) -> str:
    return (
        f"(SELECT m.{column} FROM media m WHERE m.tenant_id = {row}.tenant_id "
        f"AND m.chat = {row}.chat AND {_INCOMING.format('m')} "
        "ORDER BY m.received_at DESC, m.sender_name DESC LIMIT 1)"
    )


def _sqlite_remove(row: str) -> str:
    gone = f"named_at IS NOT NULL AND named_at <= {row}.received_at"
    return (
        f"UPDATE media_chats SET rows = rows - 1, bytes = bytes - {_BYTES.format(row)}, "
        f"last_at = CASE WHEN last_at <= {row}.received_at THEN (SELECT max(m.received_at) "
        f"FROM media m WHERE m.tenant_id = {row}.tenant_id AND m.chat = {row}.chat) "
        "ELSE last_at END, "
        f"name = CASE WHEN {gone} THEN {_newest_named(row, 'sender_name')} ELSE name END, "
        f"named_at = CASE WHEN {gone} THEN {_newest_named(row, 'received_at')} "
        "ELSE named_at END "
        f"WHERE tenant_id = {row}.tenant_id AND chat = {row}.chat; "
        "DELETE FROM media_chats "
        f"WHERE tenant_id = {row}.tenant_id AND chat = {row}.chat AND rows = 0;"
    )


def upgrade() -> None:
    op.create_table(
        "media_chats",
        sa.Column("tenant_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chat", sa.String(length=255), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("named_at", sa.DateTime(), nullable=True),
        sa.Column("is_group", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "chat"),
    )
    # The Chats page reads the newest first: (last_at, chat, tenant) descending, a total order.
    op.create_index("ix_media_chats_tenant_last", "media_chats", ["tenant_id", "last_at", "chat"])
    op.create_index("ix_media_chats_last", "media_chats", ["last_at", "chat", "tenant_id"])
    op.create_table(
        "media_chat_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("chat", sa.String(length=255), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("named_at", sa.DateTime(), nullable=True),
        sa.Column("is_group", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
    )
    op.execute(
        "INSERT INTO media_chats (tenant_id, chat, rows, bytes, last_at, is_group) "
        f"SELECT tenant_id, chat, count(*), sum({_BYTES.format('media')}), max(received_at), "
        f"max({_GROUP.format('media')}) = 1 "
        "FROM media WHERE chat IS NOT NULL GROUP BY tenant_id, chat"
    )
    op.execute(
        f"UPDATE media_chats SET name = {_newest_named('media_chats', 'sender_name')}, "
        f"named_at = {_newest_named('media_chats', 'received_at')} WHERE NOT is_group"
    )
    if op.get_bind().dialect.name == "postgresql":
        for operation, body in _PG_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION media_chats_{operation}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER media_chats_{operation} AFTER {operation.upper()} ON media "
                f"REFERENCING {_PG_TRANSITIONS[operation]} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION media_chats_{operation}()"
            )
        return
    op.execute(
        f"CREATE TRIGGER media_chats_insert AFTER INSERT ON media BEGIN {_sqlite_add('new')} END"
    )
    op.execute(
        f"CREATE TRIGGER media_chats_delete AFTER DELETE ON media BEGIN {_sqlite_remove('old')} END"
    )
    op.execute(
        "CREATE TRIGGER media_chats_update AFTER UPDATE OF "
        "tenant_id, chat, size, file_length ON media "
        "WHEN old.tenant_id IS NOT new.tenant_id OR old.chat IS NOT new.chat "
        f"OR {_BYTES.format('old')} IS NOT {_BYTES.format('new')} BEGIN "
        f"{_sqlite_remove('old')} {_sqlite_add('new')} END"
    )


def downgrade() -> None:
    for operation in ("insert", "delete", "update"):
        op.execute(
            f"DROP TRIGGER IF EXISTS media_chats_{operation}"
            + (" ON media" if op.get_bind().dialect.name == "postgresql" else "")
        )
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS media_chats_{operation}()")
    op.drop_table("media_chat_deltas")
    op.drop_index("ix_media_chats_last", table_name="media_chats")
    op.drop_index("ix_media_chats_tenant_last", table_name="media_chats")
    op.drop_table("media_chats")
