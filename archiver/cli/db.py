"""`titan-archiver db`: create or migrate the schema."""

from __future__ import annotations

import click

from archiver.cli.context import current_settings, friendly
from archiver.infra import migrate
from archiver.infra.db import make_engine


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@friendly
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema (Alembic)."""
    engine = make_engine(current_settings().database_url)
    try:
        migrate.upgrade(engine, revision)
        click.echo(f"database at revision {migrate.current_revision(engine)}", err=True)
    finally:
        engine.dispose()
