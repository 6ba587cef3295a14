"""the bucket's ETag of each archived object

Revision ID: 0017
Revises: 0016

A multipart object used to get its SHA-256 as metadata by a server-side copy of the whole
object once the hash was known: a second write of every large file, a third of a 70 MB
video's time against a bucket 40 ms away (docs/performance.md). The row now keeps the ETag
the bucket gave the object; ``reconcile`` checks it where an object has no SHA-256
metadata. The SHA-256 stays on the row, and small objects still carry it as metadata.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("etag", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.drop_column("etag")
