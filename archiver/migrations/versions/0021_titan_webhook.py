"""titan webhook: the webhook `tenants connect` registered with Titan for a tenant

Revision ID: 0021
Revises: 0020

The tenant remembers the id Titan gave its webhook and the URL it points at, so
``tenants check`` can tell that the webhook still exists, is enabled and points here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("titan_webhook_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("webhook_url")
        batch.drop_column("titan_webhook_id")
