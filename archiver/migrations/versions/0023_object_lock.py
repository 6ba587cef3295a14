"""object lock: a tenant's S3 Object Lock (WORM) mode and retention period

Revision ID: 0023
Revises: 0022

``object_lock_mode`` (governance or compliance; NULL: off) and ``object_lock_days``: every
object written for the tenant (originals and renditions) carries that retention.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("object_lock_mode", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("object_lock_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("object_lock_days")
        batch.drop_column("object_lock_mode")
