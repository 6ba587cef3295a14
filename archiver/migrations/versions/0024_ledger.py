"""ledger: the tamper-evident record, an append-only hash chain per tenant

Revision ID: 0024
Revises: 0023

``ledger``: per tenant (0: the deployment's own events), entries numbered from 1, each
holding the canonical JSON of what it records (an archived media, an audit event, an
erasure) and the SHA-256 of the previous entry's hash and this body. ``ledger_heads``: the
last entry of each chain, locked while appending. ``sealed_seq`` on media rows and audit
events: the entry that records them (NULL: not sealed yet). ``signing_keys``: the Ed25519
key that signs the checkpoints of chain heads written to tenants' buckets (encrypted under
the master key, like tenant secrets).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.UniqueConstraint("tenant_id", "seq", name="uq_ledger_tenant_seq"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("private_enc", sa.Text(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "ledger_heads",
        sa.Column("tenant_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
    )
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("sealed_seq", sa.Integer(), nullable=True))
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("sealed_seq", sa.Integer(), nullable=True))
    op.create_index(
        "ix_media_unsealed",
        "media",
        ["tenant_id", "archived_at"],
        postgresql_where=sa.text("sealed_seq IS NULL AND archived_at IS NOT NULL"),
        sqlite_where=sa.text("sealed_seq IS NULL AND archived_at IS NOT NULL"),
    )
    op.create_index(
        "ix_audit_events_unsealed",
        "audit_events",
        ["id"],
        postgresql_where=sa.text("sealed_seq IS NULL"),
        sqlite_where=sa.text("sealed_seq IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_unsealed", table_name="audit_events")
    op.drop_index("ix_media_unsealed", table_name="media")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("sealed_seq")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("sealed_seq")
    op.drop_table("ledger_heads")
    op.drop_table("signing_keys")
    op.drop_table("ledger")
