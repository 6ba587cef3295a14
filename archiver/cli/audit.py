"""`titan-archiver audit`: the administrative actions taken, newest first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click

from archiver.cli.context import database, friendly
from archiver.governance import audit as trail


@click.group()
def audit() -> None:
    """The audit trail: who did what to which tenant, and when."""


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
