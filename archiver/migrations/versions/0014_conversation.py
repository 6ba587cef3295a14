"""every row keeps its conversation: chat, isGroup, fromMe, the sender's name

Revision ID: 0014
Revises: 0013

Existing rows get what can be known of them and nothing more: a row whose sender is a
group id (``...@g.us``: a group message that named no participant) belongs to that group.
Every other existing row keeps NULLs, since its group, if any, was not kept.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_media_tenant_chat": ["tenant_id", "chat", "received_at", "pk"],
    "ix_media_tenant_group": ["tenant_id", "is_group", "received_at", "pk"],
    "ix_media_tenant_from_me": ["tenant_id", "from_me", "received_at", "pk"],
}


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("chat", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("is_group", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("from_me", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("sender_name", sa.String(length=255), nullable=True))
    op.execute(
        sa.text(
            "UPDATE media SET chat = sender, is_group = :yes "
            "WHERE sender LIKE '%@g.us' AND chat IS NULL"
        ).bindparams(yes=True)
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "media", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="media")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("sender_name")
        batch.drop_column("from_me")
        batch.drop_column("is_group")
        batch.drop_column("chat")
