"""a partial index on archived_at for the dashboard's archive rate

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_media_archived_at",
        "media",
        ["archived_at"],
        postgresql_where=sa.text("archived_at IS NOT NULL"),
        sqlite_where=sa.text("archived_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_media_archived_at", table_name="media")
