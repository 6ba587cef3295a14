"""The database engine and the one place that opens a session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session

from archiver.errors import Unavailable


def make_engine(url: str, *, durable_commits: bool = True, **kwargs: Any) -> Engine:
    """Create the engine for one process (never at import: it must not cross a fork).

    ``durable_commits=False`` is for the worker (PostgreSQL only). Each of its transitions
    is one idempotent statement, re-driven by the lease and the sweeper if a crash loses it,
    so: ``synchronous_commit=off`` (no wait for the WAL flush), autocommit (the statement is
    its own transaction: no BEGIN and COMMIT round-trips), and no ping before each checkout
    (a connection that died with its server fails the statement as Unavailable, the pool is
    invalidated, and the task retries). The receiver's accept always waits for the flush.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", durable_commits)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if not durable_commits:
        connect_args["options"] = "-c synchronous_commit=off"
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    kwargs.setdefault("connect_args", connect_args)
    return create_engine(url, **kwargs)


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
    except OperationalError as exc:
        raise Unavailable("database unavailable") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("database connection lost") from exc
        raise
