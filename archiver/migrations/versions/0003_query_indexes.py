"""query API: sender lid, and indexes that serve every filter with keyset paging

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender_lid", sa.String(length=255), nullable=True))
        batch_op.drop_index("ix_media_tenant_status")
        batch_op.create_index("ix_media_tenant_status", ["tenant_id", "status", "pk"])
        batch_op.create_index("ix_media_tenant_type", ["tenant_id", "message_type", "pk"])
        batch_op.create_index("ix_media_tenant_sender", ["tenant_id", "sender"])
        batch_op.create_index("ix_media_tenant_sender_lid", ["tenant_id", "sender_lid"])
        batch_op.create_index("ix_media_tenant_received", ["tenant_id", "received_at"])
        # text_pattern_ops lets PostgreSQL serve "mimeType=image/" (LIKE 'image/%') by index.
        batch_op.create_index(
            "ix_media_tenant_mime",
            ["tenant_id", "mime_type"],
            postgresql_ops={"mime_type": "text_pattern_ops"},
        )


def downgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        for name in ("mime", "received", "sender_lid", "sender", "type"):
            batch_op.drop_index(f"ix_media_tenant_{name}")
        batch_op.drop_index("ix_media_tenant_status")
        batch_op.create_index("ix_media_tenant_status", ["tenant_id", "status"])
        batch_op.drop_column("sender_lid")
