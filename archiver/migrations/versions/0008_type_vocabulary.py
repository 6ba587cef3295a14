"""type vocabulary: voice notes (ptt/voice) are audio with a voice_note flag, file is document

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(
            sa.Column("voice_note", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Rows stored under the raw names before the vocabulary was mapped: what they are.
    op.execute(
        "UPDATE media SET message_type = 'audio', voice_note = true "
        "WHERE message_type IN ('ptt', 'voice')"
    )
    op.execute("UPDATE media SET message_type = 'document' WHERE message_type = 'file'")


def downgrade() -> None:
    op.execute("UPDATE media SET message_type = 'ptt' WHERE voice_note")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("voice_note")
