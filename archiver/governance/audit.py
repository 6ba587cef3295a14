"""The audit trail: every administrative action as a persisted record of who did what to
which tenant, and when.

Who: ``cli:<os user>`` for the command line, ``admin`` for the admin API key (HTTP API and
dashboard), ``key:<id>`` for a tenant's query API key, ``retention`` for the beat's
deletions, ``worker`` for a tenant a worker paused. The record is written in the same
transaction as the action where there is one, so an action never happens unrecorded.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from archiver.tables import AuditEvent, utcnow

MAX_DETAIL = 4000


def cli_actor() -> str:
    """``cli:<os user>``: the person at the terminal, as the OS knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"[:128]


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    tenant_id: int | None = None,
    tenant: str | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add one record to ``session`` (committed with the caller's transaction)."""
    text = None if not detail else json.dumps(detail, sort_keys=True, default=str)[:MAX_DETAIL]
    event = AuditEvent(
        at=at or utcnow(),
        actor=actor[:128],
        action=action[:64],
        tenant_id=tenant_id,
        tenant=tenant,
        detail=text,
    )
    session.add(event)
    return event


def record_cli(
    session: Session,
    action: str,
    *,
    tenant_id: int | None = None,
    tenant: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """``record`` for a command-line action: the actor is ``cli:<os user>``."""
    return record(
        session, actor=cli_actor(), action=action, tenant_id=tenant_id, tenant=tenant, detail=detail
    )


@dataclass(frozen=True)
class AuditFilter:
    tenant: str | None = None
    action: str | None = None  # exact, or a prefix ending in "." ("tenant.")
    actor: str | None = None
    since: datetime | None = None
    limit: int = 100


def listing(session: Session, flt: AuditFilter) -> list[AuditEvent]:
    """The newest records first."""
    query = select(AuditEvent)
    if flt.tenant is not None:
        query = query.where(col(AuditEvent.tenant) == flt.tenant)
    if flt.action is not None:
        if flt.action.endswith("."):
            query = query.where(col(AuditEvent.action).startswith(flt.action, autoescape=True))
        else:
            query = query.where(col(AuditEvent.action) == flt.action)
    if flt.actor is not None:
        query = query.where(col(AuditEvent.actor) == flt.actor)
    if flt.since is not None:
        query = query.where(col(AuditEvent.at) >= flt.since)
    query = query.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
    return list(session.exec(query.limit(flt.limit)))


def as_dict(event: AuditEvent) -> dict[str, Any]:
    """One record as the CLI prints it and the dashboard shows it."""
    assert event.at is not None
    return {
        "id": event.id,
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "actor": event.actor,
        "action": event.action,
        "tenant": event.tenant,
        "detail": json.loads(event.detail) if event.detail else None,
    }
