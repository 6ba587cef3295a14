"""what a tenant captures, retention and legal hold, revocations, notifications, audit trail,
a tenant's own CA bundle for its S3 endpoint

Revision ID: 0015
Revises: 0014

Every new tenant setting defaults to what the archiver did before: incoming media of every
type and size, status and group media included, outgoing media not captured, nothing ever
deleted, no notifications. Existing rows get no legal hold and no revocation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("capture_outgoing", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("capture_status", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(
            sa.Column("capture_groups", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("capture_types", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("capture_max_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("delete_revoked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("notify_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("notify_secret_enc", sa.Text(), nullable=True))
        batch.add_column(sa.Column("s3_ca_bundle", sa.Text(), nullable=True))
    with op.batch_alter_table("media") as batch:
        batch.add_column(
            sa.Column("legal_hold", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("revoked_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("revoked_by", sa.String(length=32), nullable=True))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("media_id", sa.String(length=255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("next_at", sa.DateTime(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_notifications_due", "notifications", ["state", "next_at"])
    op.create_index("ix_notifications_tenant", "notifications", ["tenant_id", "state"])
    op.create_index("ix_notifications_media", "notifications", ["tenant_id", "media_id"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at", "id"])
    op.create_index("ix_audit_events_tenant", "audit_events", ["tenant", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_tenant", table_name="audit_events")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_notifications_media", table_name="notifications")
    op.drop_index("ix_notifications_tenant", table_name="notifications")
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_table("notifications")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("revoked_by")
        batch.drop_column("revoked_at")
        batch.drop_column("legal_hold")
    with op.batch_alter_table("tenants") as batch:
        for column in (
            "s3_ca_bundle",
            "notify_secret_enc",
            "notify_url",
            "retention_days",
            "delete_revoked",
            "capture_max_bytes",
            "capture_types",
            "capture_groups",
            "capture_status",
            "capture_outgoing",
        ):
            batch.drop_column(column)
