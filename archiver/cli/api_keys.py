"""`titan-archiver api-keys`: query API keys, several per tenant, shown once, stored hashed."""

from __future__ import annotations

import json

import click

from archiver.cli.context import database, friendly
from archiver.governance import audit
from archiver.media.shapes import ApiKeyView
from archiver.tenants.api_keys import issue, list_keys, revoke_key
from archiver.tenants.tenants import get_tenant, get_tenant_by_id


@click.group("api-keys")
def api_keys_group() -> None:
    """Query API keys: several per tenant, shown once, stored hashed, revocable."""


@api_keys_group.command("create")
@click.argument("tenant")
@click.option("--label", default=None, help="What the key is for (e.g. 'dashboard', 'etl').")
@friendly
def api_keys_create(tenant: str, label: str | None) -> None:
    """Issue a new key for TENANT and print it (the only time it is shown)."""

    if label is not None and not 0 < len(label) <= 64:
        raise click.BadParameter("1 to 64 characters", param_hint="--label")
    with database() as session:
        owner = get_tenant(session, name=tenant)
        assert owner.id is not None
        row, key = issue(session, tenant_id=owner.id, label=label)
        session.flush()
        audit.record_cli(
            session,
            "key.create",
            tenant_id=owner.id,
            tenant=owner.name,
            detail={"keyId": row.id, "prefix": row.prefix, "label": label},
        )
        view = ApiKeyView.of(row, tenant=owner.name).doc()
    click.echo(json.dumps({**view, "apiKey": key}))


@api_keys_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@friendly
def api_keys_list(tenant: str | None) -> None:
    """Every key (prefix, label, created, last used, revoked), one JSON object per line."""

    with database() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        for key, name in list_keys(session, tenant_id=tenant_id):
            click.echo(json.dumps(ApiKeyView.of(key, tenant=name).doc()))


@api_keys_group.command("revoke")
@click.argument("prefix")
@click.option("--tenant", default=None, help="Only match this tenant's keys.")
@friendly
def api_keys_revoke(prefix: str, tenant: str | None) -> None:
    """Revoke the key shown as PREFIX (or given whole); it stops working at once."""

    with database() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        key = revoke_key(session, prefix=prefix, tenant_id=tenant_id)
        owner = get_tenant_by_id(session, tenant_id=key.tenant_id)
        audit.record_cli(
            session,
            "key.revoke",
            tenant_id=owner.id,
            tenant=owner.name,
            detail={"keyId": key.id, "prefix": key.prefix},
        )
        click.echo(json.dumps(ApiKeyView.of(key, tenant=owner.name).doc()))
