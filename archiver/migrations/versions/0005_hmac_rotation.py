"""webhook key rotation: a previous HMAC key that still verifies until it expires

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hmac_key_previous_enc", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("hmac_key_previous_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("hmac_key_previous_expires_at")
        batch_op.drop_column("hmac_key_previous_enc")
