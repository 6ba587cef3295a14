"""The database engine and the one place that opens a session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlmodel import Session

from archiver.errors import ConfigError, Unavailable

POOL_MODE_OPTION = "archiver_pool_mode"


def make_engine(
    url: str, *, durable_commits: bool = True, must_exist: bool = False, **kwargs: Any
) -> Engine:
    """Create the engine for one process (never at import: it must not cross a fork).

    Behind PgBouncer in transaction pooling mode, the URL says so with ``?pool_mode=
    transaction`` (taken off before connecting): then nothing relies on a server session
    outliving a transaction, since the next transaction may run on another server
    connection: no prepared statements (psycopg ``prepare_threshold=None``, and the
    receiver's writer does not prepare) and no startup parameters (PgBouncer refuses
    ``options``), so the worker's commits are durable there too.

    ``durable_commits=False`` is for the worker (PostgreSQL only). Each of its transitions
    is one idempotent statement, re-driven by the lease and the sweeper if a crash loses it,
    so: ``synchronous_commit=off`` (no wait for the WAL flush), autocommit (the statement is
    its own transaction: no BEGIN and COMMIT round-trips), and no ping before each checkout
    (a connection that died with its server fails the statement as Unavailable, the pool is
    invalidated, and the task retries). The receiver's accept always waits for the flush.

    ``must_exist``: a SQLite file that is not there is an error (Unavailable, "not
    migrated"), not a new empty database left behind by a mistyped path (the CLI's commands;
    ``db upgrade`` creates it).
    """
    for scheme in ("postgresql://", "postgres://"):  # postgres:// as Heroku and others write it
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url.removeprefix(scheme)
    pooled = False
    if url.startswith("postgresql") and "pool_mode=" in url:
        parsed = make_url(url)
        mode = parsed.query.get("pool_mode")
        if mode not in ("session", "transaction"):
            raise ConfigError("database URL: pool_mode must be 'session' or 'transaction'")
        pooled = mode == "transaction"
        url = parsed.difference_update_query(["pool_mode"]).render_as_string(hide_password=False)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if must_exist and path and path != ":memory:" and not Path(path).exists():
            raise Unavailable(
                f"database not migrated: there is no SQLite file at {path} "
                "(run `titan-archiver db upgrade` to create it)"
            )
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", durable_commits)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if pooled:
        connect_args["prepare_threshold"] = None
    if not durable_commits:
        if not pooled:
            connect_args["options"] = "-c synchronous_commit=off"
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    kwargs.setdefault("connect_args", connect_args)
    engine = create_engine(url, **kwargs)
    if pooled:
        engine.update_execution_options(**{POOL_MODE_OPTION: "transaction"})
    return engine


def transaction_pooled(engine: Engine) -> bool:
    """Whether ``engine`` reaches PostgreSQL through a transaction-pooling PgBouncer."""
    return engine.get_execution_options().get(POOL_MODE_OPTION) == "transaction"


def transactional(engine: Engine) -> Engine:
    """``engine``, or on an autocommit (worker) engine the same pool with real transactions:
    for the few writes that must commit together (a transition and its outbox event)."""
    if (
        engine.dialect.name == "postgresql"
        and engine.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        return engine.execution_options(isolation_level="READ COMMITTED")
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the receiver write while workers read; foreign keys make deletes cascade.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, Unavailable if the DB is down."""
    try:
        with Session(engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    except (OperationalError, ProgrammingError) as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            raise
        raise Unavailable(reason) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"database connection lost: {first_line(exc)}") from exc
        raise


# SQLite's and PostgreSQL's words for a table that is not there: the schema was never
# created (or is older than this code), which `db upgrade` fixes.
_NOT_MIGRATED = ("no such table", "no such column", "does not exist")


def unavailable_reason(exc: DBAPIError) -> str | None:
    """Why the database cannot serve, as an operator acts on it: not migrated (with the
    missing table) or unreachable (with the driver's cause); None for an error that is a
    bug in the statement, not the database's state."""
    cause = first_line(exc)
    if any(words in cause for words in _NOT_MIGRATED):
        return f"database not migrated (run `titan-archiver db upgrade`): {cause}"
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return f"database unavailable: {cause}"
    return None


def first_line(exc: Exception) -> str:
    """The driver's own reason for ``exc`` (SQLAlchemy wraps it with the statement), one line."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return (text.strip().splitlines() or ["no reason given"])[0]
