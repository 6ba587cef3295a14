"""order media by (received_at, pk): indexes end in the keyset so every page is one index range

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Old index name -> the leading columns it keeps; each now ends in (received_at, pk).
REBUILT = {
    "ix_media_tenant_pk": ["tenant_id"],
    "ix_media_tenant_status": ["tenant_id", "status"],
    "ix_media_tenant_session": ["tenant_id", "session"],
    "ix_media_tenant_type": ["tenant_id", "message_type"],
}


def upgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_index("ix_media_tenant_received")
        for name, lead in REBUILT.items():
            batch_op.drop_index(name)
            batch_op.create_index(name.replace("_pk", "_received"), [*lead, "received_at", "pk"])
        batch_op.create_index("ix_media_received", ["received_at", "pk"])


def downgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_index("ix_media_received")
        for name, lead in REBUILT.items():
            batch_op.drop_index(name.replace("_pk", "_received"))
            batch_op.create_index(name, [*lead, "pk"])
        batch_op.create_index("ix_media_tenant_received", ["tenant_id", "received_at"])
