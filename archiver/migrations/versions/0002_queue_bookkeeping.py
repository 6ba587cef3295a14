"""queue bookkeeping: when a row was last queued, and its open multipart upload

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        # NULL means "not in the broker": the publish failed, so the row must be re-queued.
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(), nullable=True))
        # The multipart upload an attempt opened; the next attempt aborts it if it was orphaned.
        batch_op.add_column(sa.Column("upload_id", sa.Text(), nullable=True))
        batch_op.create_index("ix_media_status_queued", ["status", "queued_at"], unique=False)
    op.execute("UPDATE media SET queued_at = updated_at WHERE status IN ('queued', 'retrying')")


def downgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_index("ix_media_status_queued")
        batch_op.drop_column("upload_id")
        batch_op.drop_column("queued_at")
