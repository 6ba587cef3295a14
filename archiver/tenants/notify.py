"""Notifications to a tenant's own systems: ``media.archived`` and ``media.failed`` events,
POSTed to the tenant's endpoint and signed in the Standard Webhooks format.

Durable: the worker writes the event to the ``notifications`` outbox in the same
transaction as the row's transition (``enqueue``), so a crash can lose neither. Delivered
from there by each worker's notifier thread (worker/notifier.py, ``deliver_due``), never
on the archive path: an endpoint that is down or slow delays no transfer. Retried with
exponential backoff (``notify_retry_base_seconds``, doubling, at most an hour apart) until
it is answered 2xx, or given up (``failed``) ``notify_horizon_seconds`` (a day) after it
was created.

Signature (https://www.standardwebhooks.com): ``webhook-id`` (stable across retries, for
the receiver's de-duplication), ``webhook-timestamp`` (Unix seconds of this attempt),
``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` with
the secret's bytes (the base64 after ``whsec_``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from archiver import backoff
from archiver.infra.db import session_scope
from archiver.media.shapes import media_info
from archiver.secrets_box import SecretBox
from archiver.tables import Media, Notification, NotificationState, Tenant

log = logging.getLogger(__name__)
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
ARCHIVED = "media.archived"
FAILED = "media.failed"
MAX_DELAY = 3600.0
KEEP_DELIVERED = timedelta(days=7)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key a ``whsec_`` secret stands for; PayloadError-free: a malformed one raises
    ValueError (checked when it is stored)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a notification secret starts with whsec_")
    raw = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    if len(raw) < 24:
        raise ValueError("a notification secret holds at least 24 bytes")
    return raw


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def message_id(outbox_id: int, media_id: str) -> str:
    """The ``webhook-id`` of an event: the same on every retry of it."""
    return f"msg_{outbox_id}_{media_id}"[:255]


def enqueue(session: Session, *, tenant: Tenant, pk: int, event: str, now: datetime) -> None:
    """Add the event for row ``pk`` (as the transition just left it) to the outbox, in the
    caller's transaction. A tenant without an endpoint gets nothing."""
    if not tenant.notify_url:
        return
    session.flush()
    row = session.get(Media, pk, populate_existing=True)
    if row is None:
        return
    doc = {
        "type": event,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": media_info(row, tenant=tenant.name),
    }
    session.add(
        Notification(
            tenant_id=tenant.saved_id,
            event=event,
            media_id=row.media_id,
            body=json.dumps(doc, separators=(",", ":")),
            state=NotificationState.PENDING.value,
            attempts=0,
            created_at=now,
            next_at=now,
        )
    )


def already(session: Session, *, tenant_id: int, media_id: str, event: str = ARCHIVED) -> bool:
    """Whether the outbox holds ``event`` for this media already (any state)."""
    found = session.exec(
        select(Notification.id).where(
            col(Notification.tenant_id) == tenant_id,
            col(Notification.media_id) == media_id,
            col(Notification.event) == event,
        )
    ).first()
    return found is not None


def retry_delay(attempts: int, *, base: float) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from ``base``, at most an hour,
    jittered (archiver/backoff.py) so a recovered endpoint is not hit by every event at once."""
    return backoff.retry_delay(attempts, base=base, cap=MAX_DELAY)


@dataclass(frozen=True)
class Due:
    id: int
    tenant_id: int
    media_id: str
    body: str
    attempts: int
    created_at: datetime


def claim_due(session: Session, *, now: datetime, lease: timedelta, limit: int) -> list[Due]:
    """Take up to ``limit`` due events: each is pushed ``lease`` ahead, so another notifier
    leaves it alone while this one delivers it (compare-and-set on ``next_at``)."""
    found = session.exec(
        select(Notification)
        .where(
            col(Notification.state) == NotificationState.PENDING.value,
            col(Notification.next_at) <= now,
        )
        .order_by(col(Notification.next_at))
        .limit(limit)
    ).all()
    taken: list[Due] = []
    for item in found:
        claimed = (
            session.connection()
            .execute(
                update(Notification)
                .where(
                    col(Notification.id) == item.id,
                    col(Notification.state) == NotificationState.PENDING.value,
                    col(Notification.next_at) == item.next_at,
                )
                .values(next_at=now + lease, attempts=item.attempts + 1)
            )
            .rowcount
        )
        if claimed == 1:
            assert item.id is not None and item.created_at is not None
            taken.append(
                Due(
                    item.id,
                    item.tenant_id,
                    item.media_id,
                    item.body,
                    item.attempts + 1,
                    item.created_at,
                )
            )
    return taken


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    error: str | None = None


Post = Callable[[str, bytes, dict[str, str]], httpx.Response]


def attempt(due: Due, *, tenant: Tenant | None, box: SecretBox, post: Post, now: int) -> Attempt:
    """POST one event, signed; never raises."""
    if tenant is None or not tenant.notify_url or not tenant.notify_secret_enc:
        return Attempt(False, "the tenant no longer has a notification endpoint")
    secret = box.decrypt(tenant.notify_secret_enc)
    body = due.body.encode()
    msg_id = message_id(due.id, due.media_id)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=now, body=body),
        "user-agent": "titan-archiver",
    }
    try:
        answer = post(tenant.notify_url, body, headers)
    except httpx.HTTPError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= answer.status_code < 300:
        return Attempt(True)
    return Attempt(False, f"endpoint answered {answer.status_code}")


def settle(
    session: Session,
    due: Due,
    outcome: Attempt,
    *,
    now: datetime,
    base: float,
    horizon: timedelta,
    gone: bool = False,
) -> str:
    """Record an attempt: delivered, retrying (next_at) or failed; the outcome's name."""
    values: dict[str, Any]
    if outcome.delivered:
        values = {"state": NotificationState.DELIVERED.value, "delivered_at": now}
        result = "delivered"
    else:
        due_at = now + timedelta(seconds=retry_delay(due.attempts, base=base))
        if gone or due_at > due.created_at + horizon:
            values = {"state": NotificationState.FAILED.value, "next_at": None}
            result = "failed"
        else:
            values = {"next_at": due_at}
            result = "retrying"
        values["last_error"] = outcome.error
    session.execute(update(Notification).where(col(Notification.id) == due.id).values(**values))
    return result


def purge_delivered(session: Session, *, now: datetime) -> int:
    """Delivered events are kept a week (for ``status`` and debugging), then deleted."""
    return int(
        session.connection()
        .execute(
            delete(Notification).where(
                col(Notification.state) == NotificationState.DELIVERED.value,
                col(Notification.delivered_at) < now - KEEP_DELIVERED,
            )
        )
        .rowcount
    )


def counts(session: Session, *, tenant_id: int | None = None) -> dict[str, dict[str, int]]:
    """{tenant id as text: {state: n}} for pending and failed events."""
    query = (
        select(Notification.tenant_id, Notification.state, func.count())
        .where(col(Notification.state) != NotificationState.DELIVERED.value)
        .group_by(col(Notification.tenant_id), col(Notification.state))
    )
    if tenant_id is not None:
        query = query.where(col(Notification.tenant_id) == tenant_id)
    found: dict[str, dict[str, int]] = {}
    for tid, state, n in session.exec(query):
        found.setdefault(str(tid), {})[state] = int(n)
    return found


def deliver_due(
    engine: Engine,
    *,
    box: SecretBox,
    post: Post,
    now: datetime,
    base: float,
    horizon: timedelta,
    timeout: float,
    limit: int = 50,
    tenants: Callable[[int], Tenant | None],
    pool: Any = None,
) -> list[str]:
    """One round: claim what is due, POST each (concurrently on ``pool`` when given),
    record each outcome. The outcomes' names."""
    with session_scope(engine) as session:
        taken = claim_due(session, now=now, lease=timedelta(seconds=timeout * 2 + 5), limit=limit)
    if not taken:
        return []
    stamp = int(now.timestamp())

    def one(due: Due) -> tuple[Due, Attempt, bool]:
        tenant = tenants(due.tenant_id)
        return due, attempt(due, tenant=tenant, box=box, post=post, now=stamp), tenant is None

    results = list(pool.map(one, taken)) if pool is not None else [one(d) for d in taken]
    outcomes: list[str] = []
    with session_scope(engine) as session:
        for due, outcome, gone in results:
            name = settle(session, due, outcome, now=now, base=base, horizon=horizon, gone=gone)
            outcomes.append(name)
            if name != "delivered":
                log.log(
                    logging.WARNING if name == "failed" else logging.INFO,
                    "notification %s: %s",
                    "given up" if name == "failed" else "not delivered, will retry",
                    outcome.error,
                    extra={"mediaId": due.media_id, "outcome": f"notify_{name}"},
                )
    return outcomes
