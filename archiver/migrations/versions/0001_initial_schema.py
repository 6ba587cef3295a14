"""initial schema: tenants, api keys, media

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Times are stored as naive UTC; archiver.tables.UTCDateTime adds the zone back on read.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("titan_url", sa.String(length=2048), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("s3_bucket", sa.String(length=255), nullable=False),
        sa.Column("s3_endpoint", sa.String(length=2048), nullable=True),
        sa.Column("s3_region", sa.String(length=64), nullable=True),
        sa.Column("s3_access_key_id", sa.String(length=255), nullable=True),
        sa.Column("s3_prefix", sa.String(length=512), nullable=False),
        sa.Column("hmac_key_enc", sa.Text(), nullable=False),
        sa.Column("titan_api_key_enc", sa.Text(), nullable=False),
        sa.Column("s3_secret_enc", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenants_name"), ["name"], unique=True)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "media",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("media_id", sa.String(length=255), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("session", sa.String(length=64), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("mime_type", sa.String(length=255), nullable=True),
        sa.Column("file_length", sa.BigInteger(), nullable=True),
        sa.Column("sender", sa.String(length=255), nullable=True),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("persisted", sa.Boolean(), nullable=False),
        sa.Column("s3_url", sa.Text(), nullable=True),
        sa.Column("bucket", sa.String(length=255), nullable=True),
        sa.Column("object_key", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("message_at", sa.DateTime(), nullable=True),
        sa.Column("archived_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("tenant_id", "media_id", name="uq_media_tenant_media_id"),
    )
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.create_index("ix_media_status_lease", ["status", "lease_until"], unique=False)
        batch_op.create_index("ix_media_tenant_message", ["tenant_id", "message_id"], unique=False)
        batch_op.create_index("ix_media_tenant_pk", ["tenant_id", "pk"], unique=False)
        batch_op.create_index(
            "ix_media_tenant_session", ["tenant_id", "session", "pk"], unique=False
        )
        batch_op.create_index("ix_media_tenant_status", ["tenant_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_index("ix_media_tenant_status")
        batch_op.drop_index("ix_media_tenant_session")
        batch_op.drop_index("ix_media_tenant_pk")
        batch_op.drop_index("ix_media_tenant_message")
        batch_op.drop_index("ix_media_status_lease")

    op.drop_table("media")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))

    op.drop_table("api_keys")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenants_name"))

    op.drop_table("tenants")
