"""`titan-archiver keys`: rotate the master key that encrypts every tenant secret."""

from __future__ import annotations

import json
import sys

import click

from archiver.cli.context import current_settings, database, friendly
from archiver.governance import audit
from archiver.tenants.tenants import rekey_secrets


@click.group()
def keys() -> None:
    """The master key (ARCHIVER_SECRET_KEY) that encrypts every tenant's secrets."""


@keys.command("rotate")
@click.option("--dry-run", is_flag=True, help="Count what would be re-encrypted; change nothing.")
@friendly
def keys_rotate(dry_run: bool) -> None:
    """Re-encrypt every stored secret under ARCHIVER_SECRET_KEY.

    Run it with the new key in ARCHIVER_SECRET_KEY and the old one in
    ARCHIVER_PREVIOUS_SECRET_KEYS, after every process has been restarted with both (they then
    read secrets under either key). Afterwards `keys check` reports 0 and the old key can go.
    """

    settings = current_settings()
    with database() as session:
        report = rekey_secrets(session, box=settings.secret_box(), dry_run=dry_run)
    if not dry_run:
        with database() as session:
            audit.record_cli(
                session,
                "keys.rotate",
                detail={"tenants": report.tenants, "reencrypted": report.reencrypted},
            )
    click.echo(
        json.dumps(
            {
                "tenants": report.tenants,
                "secrets": report.secrets,
                "reencrypted": report.reencrypted,
                "dryRun": dry_run,
            }
        )
    )


@keys.command("check")
@friendly
def keys_check() -> None:
    """Count stored secrets that still need an older key; exit 1 if any do."""

    settings = current_settings()
    with database() as session:
        report = rekey_secrets(session, box=settings.secret_box(), dry_run=True)
    click.echo(json.dumps({"secrets": report.secrets, "needOlderKey": report.reencrypted}))
    if report.reencrypted:
        sys.exit(1)
