"""fixity: when each file's bytes were last verified, and when an audit last read them

Revision ID: 0022
Revises: 0021

``verified_at``: the last time the stored bytes were shown to be the archived ones (hashed
on the way in, or re-read by a fixity audit). ``audited_at``: the last time an audit read
them back, which is what the per-tenant daily byte budget counts. Audits read the
least recently verified first; the index serves both.
A row whose object went missing or changed is ``damaged`` (a status, no schema change).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("verified_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("audited_at", sa.DateTime(), nullable=True))
    # Partial, so the receiver's inserts (queued rows, never audited) never touch them.
    op.create_index(
        "ix_media_fixity_due",
        "media",
        ["tenant_id", "verified_at"],
        postgresql_where=sa.text("status = 'archived'"),
        sqlite_where=sa.text("status = 'archived'"),
    )
    op.create_index(
        "ix_media_audited",
        "media",
        ["tenant_id", "audited_at"],
        postgresql_where=sa.text("audited_at IS NOT NULL"),
        sqlite_where=sa.text("audited_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_media_audited", table_name="media")
    op.drop_index("ix_media_fixity_due", table_name="media")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("audited_at")
        batch.drop_column("verified_at")
