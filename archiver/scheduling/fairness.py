"""Fair across tenants, polite to Titan: who may start a transfer now.

A row of a session Titan reported logged out or banned waits for it (archiver/pauses.py);
beyond that, two rules, both per tenant and across every worker, both kept in the database (the one
thing all workers share whatever the broker):

- **A cap on concurrent transfers** (``ARCHIVER_TENANT_MAX_CONCURRENCY``, 0 = none). A worker
  claims rows as always, then admits them under a per-tenant lock: if the tenant now holds
  more live leases than the cap, the excess rows are handed back at once (no attempt spent)
  and wait out of the broker. The dispatcher publishes a capped tenant's waiting rows only
  as slots free up, and a worker that finishes one of its rows publishes the next
  (``dispatch.dispatch(..., tenant_id=...)``), so a tenant's burst of 2,000 videos holds at
  most ``cap`` worker slots while the other tenants' photos go through the rest.
- **Titan's rate limit**: Titan limits each API key. A 429 (its ``Retry-After``) or an
  answer with ``X-RateLimit-Remaining: 0`` holds the tenant (``tenants.throttled_until``):
  no transfer of it starts before then, on any worker, and its rows wait on the row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, text, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from archiver.media import lifecycle
from archiver.tables import Media, SessionPause, Status, Tenant

_LOCK_SPACE = 7_241_013  # pg_advisory_xact_lock(space, tenant id): this module's locks
# Remaining 0 with no Retry-After: how long to hold off (Titan's window is not documented).
EXHAUSTED_HOLD = timedelta(seconds=1)


@dataclass
class Admission:
    admitted: list[Media] = field(default_factory=list)
    deferred: list[tuple[Media, datetime, str]] = field(default_factory=list)  # row, until, why


def admit(session: Session, *, rows: list[Media], cap: int, now: datetime) -> Admission:
    """Split freshly claimed rows into those that may transfer now and those handed back
    (``lifecycle.defer``) because their session is paused, or their tenant is rate-limited
    or over its cap."""
    answer = Admission()
    by_tenant: dict[int, list[Media]] = defaultdict(list)
    for row in rows:
        by_tenant[row.tenant_id].append(row)
    for tenant_id in sorted(by_tenant):  # one lock order for every worker
        mine = by_tenant[tenant_id]
        _lock(session, tenant_id)
        held_sessions = set(
            session.exec(
                select(SessionPause.session).where(col(SessionPause.tenant_id) == tenant_id)
            )
        )
        if held_sessions:
            # A logged-out or banned session (archiver/pauses.py): its rows wait for it.
            for row in mine:
                if row.session in held_sessions:
                    answer.deferred.append((row, now, f"session {row.session} is paused"))
            mine = [row for row in mine if row.session not in held_sessions]
        held = session.exec(
            select(Tenant.throttled_until).where(col(Tenant.id) == tenant_id)
        ).one_or_none()
        if held is not None and held > now:
            for row in mine:
                answer.deferred.append((row, held, "titan rate limit"))
            continue
        excess = _in_flight(session, tenant_id, now) - cap if cap else 0
        keep = len(mine) - max(0, min(excess, len(mine)))
        answer.admitted += mine[:keep]
        for row in mine[keep:]:
            answer.deferred.append((row, now, f"tenant at its cap of {cap} transfers"))
    for row, until, _ in answer.deferred:
        lifecycle.defer(session, pk=row.saved_pk, attempt=row.attempts, now=now, until=until)
    return answer


def _lock(session: Session, tenant_id: int) -> None:
    """Serialise admissions of one tenant until the transaction ends (PostgreSQL; SQLite
    writers are serialised anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :tenant)"),
            {"space": _LOCK_SPACE, "tenant": tenant_id},
        )


def _in_flight(session: Session, tenant_id: int, now: datetime) -> int:
    """Rows of the tenant under a live lease (being transferred now), ours included."""
    query = select(func.count()).where(
        col(Media.tenant_id) == tenant_id,
        col(Media.status) == Status.ARCHIVING.value,
        col(Media.lease_until) >= now,
    )
    return int(session.exec(query).one())


def free_slots(session: Session, *, cap: int, now: datetime) -> dict[int, int]:
    """For each tenant with work in flight or waiting in the broker: how many more of its
    rows may be published (cap minus live leases minus rows already in the broker)."""
    query = (
        select(Media.tenant_id, func.count())
        .where(
            ((col(Media.status) == Status.ARCHIVING.value) & (col(Media.lease_until) >= now))
            | (
                col(Media.status).in_([Status.QUEUED.value, Status.RETRYING.value])
                & col(Media.queued_at).is_not(None)
            )
        )
        .group_by(col(Media.tenant_id))
    )
    return {tenant_id: max(0, cap - busy) for tenant_id, busy in session.exec(query)}


def hold(session: Session, *, tenant_id: int, until: datetime) -> bool:
    """Hold the tenant's transfers until ``until`` (a later hold already set stands)."""
    result = session.connection().execute(
        update(Tenant)
        .where(
            col(Tenant.id) == tenant_id,
            (col(Tenant.throttled_until).is_(None)) | (col(Tenant.throttled_until) < until),
        )
        .values(throttled_until=until)
    )
    return result.rowcount == 1


def throttled_ids(now: datetime) -> SelectOfScalar[int | None]:
    """A subquery of the ids of tenants held by Titan's rate limit now."""
    return select(col(Tenant.id)).where(col(Tenant.throttled_until) > now)
