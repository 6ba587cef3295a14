"""A message its sender revoked or deleted: the fact is recorded on the message's rows.

The object stays in the bucket unless the tenant erases revoked media
(``delete_revoked``): then the retention pass of the beat erases it with its row
(archiver/erasure.py), never the receiver, which answers Titan without touching S3.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from archiver.tables import Media


def record_revocation(
    session: Session,
    *,
    tenant_id: int,
    session_name: str,
    message_id: str,
    event: str,
    now: datetime,
) -> int:
    """Mark the rows of one message revoked; how many rows name it (already marked
    included, so a redelivered revocation gets the same answer)."""
    where = (
        col(Media.tenant_id) == tenant_id,
        col(Media.message_id) == message_id,
        col(Media.session) == session_name,
    )
    session.execute(
        update(Media)
        .where(*where, col(Media.revoked_at).is_(None))
        .values(revoked_at=now, revoked_by=event[:32])
    )
    counted = select(func.count()).select_from(Media).where(*where)
    return int(session.execute(counted).scalar_one())
