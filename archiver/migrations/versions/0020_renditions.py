"""renditions: thumbnails, posters and playable audio made after archiving, and what they tell

Revision ID: 0020
Revises: 0019

Each media row gains what its renditions found (width, height, duration, PDF pages), the
renditions themselves (a JSON list: kind, MIME type, key, size, SHA-256) and where making
them stands (``render_state``: pending, done, failed; ``render_attempts``, so a file that crashes
or hangs its decoder is given up rather than asked for forever). A partial index serves the
sweeper's look for renders that were asked for and never made. Tenants can turn renditions
off.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("height", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("duration_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pages", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("renditions", sa.Text(), nullable=True))
        batch.add_column(sa.Column("render_state", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("render_error", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("render_attempts", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index(
        "ix_media_render_pending",
        "media",
        ["updated_at"],
        postgresql_where=sa.text("render_state = 'pending'"),
        sqlite_where=sa.text("render_state = 'pending'"),
    )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("renditions", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("renditions")
    op.drop_index("ix_media_render_pending", table_name="media")
    with op.batch_alter_table("media") as batch:
        for name in (
            "render_attempts",
            "render_error",
            "render_state",
            "renditions",
            "pages",
            "duration_seconds",
            "height",
            "width",
        ):
            batch.drop_column(name)
