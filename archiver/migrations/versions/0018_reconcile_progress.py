"""where a reconcile run has got to, per tenant, so an interrupted one can resume

Revision ID: 0018
Revises: 0017

A reconcile of ten million objects takes hours even with its HEADs in parallel; a restart
(a deploy, a killed job) should not begin again at the first row. After each page the run
records the last row it finished; ``reconcile --resume`` goes on from there and skips the
tenants it had finished.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_progress",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("after_pk", sa.BigInteger(), nullable=False),
        sa.Column("checked", sa.BigInteger(), nullable=False),
        sa.Column("differences", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )


def downgrade() -> None:
    op.drop_table("reconcile_progress")
