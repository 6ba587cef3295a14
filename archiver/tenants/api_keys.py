"""Query API keys: random, prefixed, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from archiver.errors import Conflict, NotFound
from archiver.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "tak_"
_LAST_USED_GRANULARITY = timedelta(minutes=1)


def hash_key(key: str) -> str:
    # The key carries 256 random bits, so a fast hash is as good as a slow one here.
    return hashlib.sha256(key.encode()).hexdigest()


def issue(session: Session, *, tenant_id: int, label: str | None = None) -> tuple[ApiKey, str]:
    """Create a new API key for a tenant: its row, and its plaintext (never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=tenant_id,
        prefix=key[:12],
        label=label,
        key_hash=hash_key(key),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def issue_key(session: Session, *, tenant_id: int, label: str | None = None) -> str:
    """Create a new API key for a tenant and return its plaintext (never stored)."""
    return issue(session, tenant_id=tenant_id, label=label)[1]


def list_keys(session: Session, *, tenant_id: int | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (revoked ones too) with its tenant's name, oldest first."""
    query = select(ApiKey, Tenant.name).join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return [(key, name) for key, name in session.exec(query.order_by(col(ApiKey.id)))]


def revoke_key(session: Session, *, prefix: str, tenant_id: int | None = None) -> ApiKey:
    """Revoke the one key whose shown prefix (or whole plaintext) is ``prefix``.

    NotFound if none matches; Conflict if the prefix is ambiguous. Revoking twice is a no-op.
    """
    prefix = prefix[:12]
    query = select(ApiKey).where(ApiKey.prefix == prefix)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    found = list(session.exec(query))
    if not found:
        raise NotFound(f"no API key with prefix {prefix!r}")
    if len(found) > 1:
        raise Conflict(f"{len(found)} API keys share prefix {prefix!r}; give the whole key")
    key = found[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.flush()
    return key


def key_for(session: Session, *, key: str) -> tuple[ApiKey, Tenant]:
    """The unrevoked API key ``key`` and its tenant (last use recorded), or raise NotFound."""
    row = session.exec(
        select(ApiKey, Tenant)
        .join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at == None)  # noqa: E711
    ).first()
    if row is None:
        raise NotFound("unknown API key")
    api_key, tenant = row
    now = utcnow()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_GRANULARITY:
        session.execute(update(ApiKey).where(col(ApiKey.id) == api_key.id).values(last_used_at=now))
    return api_key, tenant


def tenant_for_key(session: Session, *, key: str) -> Tenant:
    """Return the tenant an unrevoked API key belongs to, or raise NotFound."""
    return key_for(session, key=key)[1]


def active_key(session: Session, *, key_id: int) -> Tenant:
    """The tenant of API key ``key_id`` while it is unrevoked (a signed-in session's check)."""
    row = session.exec(
        select(ApiKey, Tenant)
        .join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
        .where(ApiKey.id == key_id, ApiKey.revoked_at == None)  # noqa: E711
    ).first()
    if row is None:
        raise NotFound("API key revoked or gone")
    return row[1]
