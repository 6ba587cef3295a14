"""Query API keys: random, prefixed, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, select

from archiver.errors import NotFound
from archiver.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "tak_"
_LAST_USED_GRANULARITY = timedelta(minutes=1)


def hash_key(key: str) -> str:
    # The key carries 256 random bits, so a fast hash is as good as a slow one here.
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key(session: Session, *, tenant_id: int) -> str:
    """Create a new API key for a tenant and return its plaintext (never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(tenant_id=tenant_id, prefix=key[:12], key_hash=hash_key(key), created_at=utcnow())
    )
    session.flush()
    return key


def tenant_for_key(session: Session, *, key: str) -> Tenant:
    """Return the tenant an unrevoked API key belongs to, or raise NotFound."""
    row = session.exec(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)  # type: ignore[arg-type]
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at == None)  # noqa: E711
    ).first()
    if row is None:
        raise NotFound("unknown API key")
    api_key, tenant = row
    now = utcnow()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_GRANULARITY:
        session.execute(update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now))  # type: ignore[arg-type]
    return tenant
