"""Create or migrate the database schema with Alembic (``titan-archiver db upgrade``)."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine

from archiver.errors import ConfigError

_SCRIPTS = Path(__file__).resolve().parent.parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


MIGRATION_LOCK = 0x7A11_0001  # pg_advisory_xact_lock key held while migrating


def known_revisions() -> list[str]:
    """Every revision of the chain, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision`` (default: the newest). An unknown revision is a ConfigError
    naming the known ones, before anything is touched."""
    relative = revision.startswith(("+", "head"))
    if not relative and revision not in known_revisions():
        known = known_revisions()
        raise ConfigError(
            f"unknown revision {revision!r}: this release knows {known[0]} to {known[-1]} (or head)"
        )
    config = _config()
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # SQLite alters a table by copying it into a new one and dropping the old: with
            # foreign keys enforced, dropping `tenants` would cascade into every media row.
            # The pragma only takes effect outside a transaction, so before the migration's.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # Several processes may migrate at once (an init container in every web pod
                # of a rollout): one migrates, the others wait here, then find the schema
                # at head. A transaction lock: safe behind PgBouncer in transaction mode.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, revision)
            except CommandError as exc:  # e.g. "+5" past the newest revision
                raise ConfigError(f"cannot upgrade to {revision!r}: {exc}") from exc
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@functools.cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def schema_problem(engine: Engine) -> str | None:
    """What keeps this code from using the database's schema (None: at head): never
    migrated, or at another revision. Raises SQLAlchemyError when the database does not
    answer at all."""
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        return "not migrated: no schema (run `titan-archiver db upgrade`)"
    if current != head:
        return (
            f"schema at revision {current}, this code needs {head} "
            "(run `titan-archiver db upgrade`)"
        )
    return None
