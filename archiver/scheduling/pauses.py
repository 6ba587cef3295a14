"""Paused tenants: a tenant whose Titan key or bucket is refused stops being worked on until
it is fixed, instead of failing every one of its rows. Its rows keep their place and spend
no attempt; the dispatcher leaves them alone while it is paused and publishes them again
within seconds of a resume."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, exists, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from archiver.tables import Media, SessionPause, Tenant

log = logging.getLogger(__name__)
MAX_REASON_LEN = 1000


@dataclass(frozen=True)
class Paused:
    tenant: str
    reason: str
    since: datetime
    auto: bool  # paused by a worker (probed, resumed when the settings work again)


def pause(session: Session, *, tenant_id: int, reason: str, now: datetime, auto: bool) -> bool:
    """Pause the tenant unless it already is (the first reason and time stand)."""
    result = session.connection().execute(
        update(Tenant)
        .where(col(Tenant.id) == tenant_id, col(Tenant.paused_at).is_(None))
        .values(paused_at=now, paused_reason=reason[:MAX_REASON_LEN], paused_auto=auto)
    )
    return result.rowcount == 1


def resume(session: Session, *, tenant_id: int) -> bool:
    """Resume the tenant; False if it was not paused."""
    result = session.connection().execute(
        update(Tenant)
        .where(col(Tenant.id) == tenant_id, col(Tenant.paused_at).is_not(None))
        .values(paused_at=None, paused_reason=None, paused_auto=False)
    )
    return result.rowcount == 1


def paused(session: Session, *, tenant_id: int | None = None) -> list[Paused]:
    """The paused tenants (or the one named), longest paused first."""
    query = select(Tenant).where(col(Tenant.paused_at).is_not(None))
    if tenant_id is not None:
        query = query.where(col(Tenant.id) == tenant_id)
    return [
        Paused(t.name, t.paused_reason or "", t.paused_at, t.paused_auto)
        for t in session.exec(query.order_by(col(Tenant.paused_at)))
        if t.paused_at is not None
    ]


def paused_ids() -> SelectOfScalar[int | None]:
    """A subquery of the paused tenants' ids, for the queries that skip their rows."""
    return select(col(Tenant.id)).where(col(Tenant.paused_at).is_not(None))


# -- sessions: a logged-out or banned WhatsApp session (Titan's session events) -------------


@dataclass(frozen=True)
class PausedSession:
    tenant: str
    session: str
    reason: str
    since: datetime


def pause_session(
    session: Session, *, tenant_id: int, name: str, reason: str, now: datetime
) -> bool:
    """Hold the session's rows; False if it already was (the first reason and time stand)."""
    if session.get(SessionPause, (tenant_id, name)) is not None:
        return False
    session.add(
        SessionPause(tenant_id=tenant_id, session=name, reason=reason[:MAX_REASON_LEN], since=now)
    )
    session.flush()
    return True


def resume_session(session: Session, *, tenant_id: int, name: str) -> bool:
    """Release the session's rows; False if it was not paused."""
    result = session.connection().execute(
        delete(SessionPause).where(
            col(SessionPause.tenant_id) == tenant_id, col(SessionPause.session) == name
        )
    )
    return result.rowcount == 1


def paused_sessions(session: Session, *, tenant_id: int | None = None) -> list[PausedSession]:
    """The paused sessions (of one tenant, or all), longest paused first."""
    query = select(Tenant.name, SessionPause).where(col(Tenant.id) == col(SessionPause.tenant_id))
    if tenant_id is not None:
        query = query.where(col(SessionPause.tenant_id) == tenant_id)
    return [
        PausedSession(name, held.session, held.reason, held.since)
        for name, held in session.exec(query.order_by(col(SessionPause.since)))
        if held.since is not None
    ]


def in_paused_session() -> ColumnElement[bool]:
    """True for a media row whose session is paused, for the queries that skip such rows."""
    return exists().where(
        col(SessionPause.tenant_id) == col(Media.tenant_id),
        col(SessionPause.session) == col(Media.session),
    )
