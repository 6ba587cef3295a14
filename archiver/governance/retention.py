"""The beat's retention pass: per tenant, rows and objects older than its retention period
(terminal rows only, never one under legal hold), and revoked media of a tenant that erases
them. Bounded per tenant per pass, so one large tenant cannot hold the pass; what is left
goes in the next. Every pass that deleted something leaves an audit record."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_
from sqlmodel import col, select

from archiver.governance import audit
from archiver.governance.erasure import BATCH, Erased, S3For, Selector, erase
from archiver.infra.db import session_scope
from archiver.tables import Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantPass:
    tenant: str
    expired: Erased
    revoked: Erased


def retention_pass(
    engine: Engine, *, s3_for: S3For, now: datetime, max_rows: int
) -> list[TenantPass]:
    """One pass over every tenant with a retention period or erasing revoked media."""
    with session_scope(engine) as session:
        tenants = list(
            session.exec(
                select(Tenant).where(
                    or_(col(Tenant.retention_days).is_not(None), col(Tenant.delete_revoked))
                )
            )
        )
    batch = min(BATCH, max_rows)
    most = max(1, max_rows // batch)
    passes: list[TenantPass] = []
    for tenant in tenants:
        expired, revoked = Erased(), Erased()
        if tenant.retention_days is not None:
            cutoff = now - timedelta(days=tenant.retention_days)
            expired = erase(
                engine,
                tenant,
                Selector(received_before=cutoff),
                s3_for=s3_for,
                batch=batch,
                max_batches=most,
            )
        if tenant.delete_revoked:
            revoked = erase(
                engine,
                tenant,
                Selector(revoked=True),
                s3_for=s3_for,
                batch=batch,
                max_batches=most,
            )
        for action, done in (("retention.delete", expired), ("revoked.erase", revoked)):
            if done.rows or done.errors:
                with session_scope(engine) as session:
                    audit.record(
                        session,
                        actor="retention",
                        action=action,
                        tenant_id=tenant.id,
                        tenant=tenant.name,
                        detail={k: v for k, v in done.doc().items() if k != "mediaIds"}
                        | {"retentionDays": tenant.retention_days},
                    )
                log.info(
                    "%s: %d rows, %d objects deleted (%d held, %d in flight, %d errors)",
                    action,
                    done.rows,
                    done.objects,
                    done.held,
                    done.in_flight,
                    len(done.errors),
                    extra={"tenant": tenant.name, "outcome": action},
                )
        passes.append(TenantPass(tenant.name, expired, revoked))
    return passes
