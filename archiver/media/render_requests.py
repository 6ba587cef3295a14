"""Asking for renditions: which rows are due one, and publishing the render task.

A row asks for its renditions when it is archived (``render_state`` pending); ``media
render --missing`` asks for rows archived before renditions existed. The sweeper asks
again for rows still pending long after their ask once the render queue has drained
(the message was lost: Redis restarted, a render worker killed mid-file).
"""

from __future__ import annotations

from datetime import datetime

from celery import Celery
from sqlalchemy import ColumnElement, false, func, or_, update
from sqlmodel import Session, col, select

from archiver.infra.broker import publish_task
from archiver.queue import RENDER_QUEUE, RENDER_TASK
from archiver.tables import Media, RenderState, Status, Tenant

# Message types with renditions or facts; a document only when it is a PDF (see
# archiver/renditions.renderable, the same rule per row).
_TYPES = ("image", "sticker", "video", "audio")


BATCH = 4  # rows per render message when many are asked at once: several workers share them


def publish_render(app: Celery, *, pks: list[int]) -> None:
    """Queue the rendering of archived rows ``pks``, one message per ``BATCH``; Unavailable
    if the broker cannot take it. One message per archive task keeps the ask off the
    archive's cost (a batch of 16 small files asks once)."""
    for start in range(0, len(pks), BATCH):
        publish_task(app, task=RENDER_TASK, args=[pks[start : start + BATCH]], queue=RENDER_QUEUE)


def _missing(tenant_id: int | None, *, failed: bool = False) -> list[ColumnElement[bool]]:
    """Archived rows in the tenant's bucket, of a rendered type, of a tenant with renditions
    on, never rendered (or asked and not done; ``failed``: or whose render failed)."""
    states = [RenderState.PENDING.value, *([RenderState.FAILED.value] if failed else [])]
    where = [
        col(Media.status) == Status.ARCHIVED.value,
        # The worker's object, or Titan's (persist): whether it is in the tenant's bucket
        # is for the render to tell.
        or_(col(Media.object_key).is_not(None), col(Media.s3_url).is_not(None)),
        col(Tenant.renditions) != false(),
        or_(col(Media.render_state).is_(None), col(Media.render_state).in_(states)),
        or_(col(Media.message_type).in_(_TYPES), col(Media.mime_type).like("application/pdf%")),
    ]
    if tenant_id is not None:
        where.append(col(Media.tenant_id) == tenant_id)
    return where


def missing_count(session: Session, *, tenant_id: int | None, failed: bool = False) -> int:
    query = (
        select(func.count())
        .select_from(Media)
        .join(Tenant, col(Tenant.id) == col(Media.tenant_id))
        .where(*_missing(tenant_id, failed=failed))
    )
    return int(session.exec(query).one())


def pending_count(session: Session, *, tenant_id: int | None) -> int:
    """Renders asked for and not made yet."""
    query = (
        select(func.count())
        .select_from(Media)
        .where(col(Media.render_state) == RenderState.PENDING.value)
    )
    if tenant_id is not None:
        query = query.where(col(Media.tenant_id) == tenant_id)
    return int(session.exec(query).one())


def ask_missing(
    session: Session,
    *,
    tenant_id: int | None,
    after_pk: int,
    limit: int,
    now: datetime,
    failed: bool = False,
) -> list[int]:
    """Mark the next ``limit`` rows after ``after_pk`` without renditions as pending; their pks."""
    query = (
        select(Media.pk)
        .join(Tenant, col(Tenant.id) == col(Media.tenant_id))
        .where(*_missing(tenant_id, failed=failed), col(Media.pk) > after_pk)
        .order_by(col(Media.pk))
        .limit(limit)
    )
    pks = [pk for pk in session.exec(query) if pk is not None]
    if pks:
        session.execute(
            update(Media)
            .where(col(Media.pk).in_(pks))
            .values(render_state=RenderState.PENDING.value, render_attempts=0, updated_at=now)
        )
    return pks


def stale(session: Session, *, before: datetime, limit: int) -> list[int]:
    """Rows asked to render before ``before`` and still pending; asked again (at ``before``'s
    caller's now) by the caller."""
    query = (
        select(Media.pk)
        .where(
            col(Media.render_state) == RenderState.PENDING.value,
            col(Media.updated_at) < before,
        )
        .order_by(col(Media.updated_at))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def touch(session: Session, *, pks: list[int], now: datetime) -> None:
    """Record that these rows were asked again now (so the next sweep waits again)."""
    if pks:
        session.execute(
            update(Media)
            .where(col(Media.pk).in_(pks), col(Media.render_state) == RenderState.PENDING.value)
            .values(updated_at=now)
        )
