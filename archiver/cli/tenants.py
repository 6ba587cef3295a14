"""`titan-archiver tenants`: add, list, show, rotate the webhook key of, and remove tenants."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from archiver.cli.context import current_settings, database, friendly
from archiver.cli.output import echo_json
from archiver.shapes import TenantView
from archiver.tenants import (
    TenantSpec,
    create_tenant,
    get_tenant,
    list_tenants,
    remove_tenant,
    rotate_hmac_key,
)


@click.group()
def tenants() -> None:
    """Tenants: the Titan accounts whose media is archived."""


@tenants.command("add")
@click.argument("name")
@click.option("--hmac-key", required=True, help="The Titan webhook's signing key (hmacKey).")
@click.option("--titan-url", required=True, help="The Titan account's API base URL.")
@click.option("--titan-api-key", required=True, help="A Titan server API key (titan_...).")
@click.option(
    "--strategy", type=click.Choice(["download", "persist"]), default="download", show_default=True
)
@click.option("--s3-bucket", required=True)
@click.option("--s3-endpoint", default="", help="Blank for AWS S3; the URL for R2 or MinIO.")
@click.option("--s3-region", default="")
@click.option("--s3-access-key-id", default="")
@click.option("--s3-secret-access-key", default="")
@click.option("--s3-prefix", default="", help="Key prefix inside the bucket.")
@friendly
def tenants_add(name: str, **options: str) -> None:
    """Add a tenant; print it with a fresh query API key (shown only this once)."""
    spec = TenantSpec(name=name, **options)
    box = current_settings().secret_box()
    with database() as session:
        tenant, api_key = create_tenant(session, box=box, spec=spec)
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps({"name": name, "apiKey": api_key, **view}))


@tenants.command("list")
@friendly
def tenants_list() -> None:
    """List tenants (secrets masked), one JSON object per line."""
    with database() as session:
        for tenant in list_tenants(session):
            click.echo(json.dumps(TenantView.of(tenant).doc()))


@tenants.command("show")
@click.argument("name")
@friendly
def tenants_show(name: str) -> None:
    """Show one tenant (secrets masked)."""
    with database() as session:
        echo_json(TenantView.of(get_tenant(session, name=name)).doc())


@tenants.command("rotate-hmac-key")
@click.argument("name")
@click.option("--hmac-key", required=True, help="The webhook's new signing key.")
@click.option(
    "--previous-valid-for",
    default=24.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Hours the current key keeps verifying (0: stop at once).",
)
@friendly
def tenants_rotate_hmac_key(name: str, hmac_key: str, previous_valid_for: float) -> None:
    """Switch the tenant to a new webhook key; signatures by the old one verify until it expires.

    Receivers pick the change up within 5 seconds (their tenant cache).
    """
    box = current_settings().secret_box()
    with database() as session:
        tenant = rotate_hmac_key(
            session,
            box=box,
            name=name,
            new_key=hmac_key,
            previous_valid_for=timedelta(hours=previous_valid_for),
        )
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps(view))


@tenants.command("remove")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the tenant's media rows.")
@friendly
def tenants_remove(name: str, purge: bool) -> None:
    """Remove a tenant. Objects in its bucket are never touched."""
    with database() as session:
        rows = remove_tenant(session, name=name, purge=purge)
    click.echo(f"removed tenant {name} ({rows} media rows deleted)", err=True)
