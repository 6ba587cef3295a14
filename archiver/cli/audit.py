"""`titan-archiver audit`: the administrative actions taken, newest first."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import click
from botocore.exceptions import BotoCoreError, ClientError
from sqlmodel import Session, select

from archiver.cli.context import current_settings, database, friendly
from archiver.governance import audit as trail
from archiver.governance import checkpoints as signed
from archiver.governance import ledger
from archiver.infra.buckets import TenantS3Clients
from archiver.settings import Settings
from archiver.tables import LedgerHead
from archiver.tenants.tenants import get_tenant, list_tenants


@click.group()
def audit() -> None:
    """The audit trail: who did what to which tenant, and when; and the tamper-evident
    chains that seal it with every archived media (audit verify)."""


@audit.command("list")
@click.option("--tenant", default=None, help="Only actions on this tenant.")
@click.option(
    "--action", default=None, help="Only this action (tenant.update), or a family (tenant.)."
)
@click.option("--actor", default=None, help="Only this actor (admin, key:3, cli:alice, retention).")
@click.option(
    "--since-hours", type=click.FloatRange(0), default=None, help="Only the last N hours."
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table")
@friendly
def audit_list(
    tenant: str | None,
    action: str | None,
    actor: str | None,
    since_hours: float | None,
    limit: int,
    fmt: str,
) -> None:
    """List audit records, newest first: time, actor, action, tenant, detail."""
    since = None if since_hours is None else datetime.now(UTC) - timedelta(hours=since_hours)
    flt = trail.AuditFilter(tenant=tenant, action=action, actor=actor, since=since, limit=limit)
    with database() as session:
        docs = [trail.as_dict(event) for event in trail.listing(session, flt)]
    for doc in docs:
        if fmt == "jsonl":
            click.echo(json.dumps(doc))
            continue
        detail = json.dumps(doc["detail"], separators=(",", ":")) if doc["detail"] else ""
        click.echo(
            f"{doc['at']}  {doc['actor']:<20} {doc['action']:<24} {doc['tenant'] or '-':<16} "
            f"{detail}"
        )


@audit.command("verify")
@click.option("--tenant", default=None, help="Only this tenant's chain (else every chain).")
@click.option(
    "--checkpoints",
    is_flag=True,
    help="Also compare each chain with the newest signed checkpoint in its tenant's bucket.",
)
@friendly
def audit_verify(tenant: str | None, checkpoints: bool) -> None:
    """Recompute the tamper-evident chains from the database alone (offline) and compare
    each sealed record with its row: one JSON line per chain ({tenant, entries, intact,
    firstBroken, problems, unsealed}); the first broken link of each is named on stderr.
    --checkpoints also reads the newest signed checkpoint from each tenant's bucket, which
    a database rewritten wholesale no longer matches. Exits 1 when a chain is broken."""
    settings = current_settings()
    with database() as session:
        if tenant is not None:
            chains = [(get_tenant(session, name=tenant).saved_id, tenant)]
        else:
            names = {t.saved_id: t.name for t in list_tenants(session)}
            chained = set(session.exec(select(LedgerHead.tenant_id)))
            chains = [(0, "(deployment)")] + [
                (tenant_id, names.get(tenant_id, f"(removed tenant {tenant_id})"))
                for tenant_id in sorted((chained | set(names)) - {0})
            ]
        results = [ledger.verify(session, tenant_id=i, tenant=name) for i, name in chains]
        if checkpoints:
            _check_checkpoints(session, settings, chains, results)
    broken = False
    for found in results:
        click.echo(json.dumps(found.doc()))
        if found.broken is not None:
            broken = True
            click.echo(f"{found.tenant}: {found.broken}", err=True)
    if broken:
        sys.exit(1)


def _check_checkpoints(
    session: Session,
    settings: Settings,
    chains: list[tuple[int, str]],
    results: list[ledger.Verification],
) -> None:
    box = settings.secret_box()
    public = signed.public_text(signed.signing_key(session, box).public_key())
    clients = TenantS3Clients(settings=settings, box=box)
    owners = {t.saved_id: t for t in list_tenants(session)}
    for (tenant_id, _), found in zip(chains, results, strict=True):
        owner = owners.get(tenant_id)
        if owner is None:
            continue
        try:
            newest = signed.latest(clients.get(owner), owner)
        except (ClientError, BotoCoreError) as exc:
            found.problems.append((0, f"checkpoints unreadable: {signed.bucket_error(exc)}"))
            continue
        if newest is None:
            continue  # nothing sealed for the tenant yet
        problem = signed.problem(session, owner, newest, public)
        if problem is not None:
            found.problems.append((int(newest.get("seq", 0)), problem))


@audit.command("public-key")
@friendly
def audit_public_key() -> None:
    """The Ed25519 public key (PEM) that signs the ledger checkpoints in tenants' buckets,
    for an auditor to check them with."""
    settings = current_settings()
    with database() as session:
        click.echo(signed.public_pem(session, settings.secret_box()), nl=False)
