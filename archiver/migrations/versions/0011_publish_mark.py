"""rows are marked published after their publish: keep that mark a cheap, in-page update

Revision ID: 0011
Revises: 0010

The receiver now records a row with ``queued_at`` NULL and sets it once the broker took the
message. No index may cover ``queued_at`` (or PostgreSQL must add an entry to every index
of the table for each mark); the sweeper's and dispatcher's queries filter pending rows by
status through ``ix_media_status_lease``. A little free space in each page lets the mark
stay on the row's own page (a heap-only update).
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_media_status_queued", table_name="media")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE media SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE media RESET (fillfactor)")
    op.create_index("ix_media_status_queued", "media", ["status", "queued_at"])
