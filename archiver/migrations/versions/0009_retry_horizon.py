"""retries scheduled on the row (retry_at) and counted deaths of its workers (crashes)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("retry_at", sa.DateTime(), nullable=True))
        batch.add_column(
            sa.Column("crashes", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.drop_column("crashes")
        batch.drop_column("retry_at")
