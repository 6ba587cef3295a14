"""a tenant can be paused (by an operator, or by a worker when Titan or the bucket refuses it)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("paused_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("paused_reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("paused_auto", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("paused_auto")
        batch.drop_column("paused_reason")
        batch.drop_column("paused_at")
