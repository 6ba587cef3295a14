"""How every command reads settings, opens the database and reports errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
from sqlmodel import Session

from archiver.errors import AppError
from archiver.infra.db import make_engine, session_scope
from archiver.reporting import figures
from archiver.settings import Settings, load_settings
from archiver.tenants.tenants import get_tenant

P = ParamSpec("P")
R = TypeVar("R")


def current_settings() -> Settings:
    ctx = click.get_current_context()
    meta = ctx.find_root().meta
    cached = meta.get("settings")
    if not isinstance(cached, Settings):
        cached = meta["settings"] = load_settings()
    return cached


@contextmanager
def database() -> Iterator[Session]:
    engine = make_engine(current_settings().database_url, must_exist=True)
    try:
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def friendly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn our own errors into a one-line message and exit status 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AppError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a file or folder the command was pointed at
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from exc

    return wrapper


def scope_count(engine: Any, tenant: str | None, status: str | None) -> tuple[int | None, int]:
    """The tenant's id (None: every tenant) and how many of its rows have ``status`` (or any)."""
    with session_scope(engine) as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        counts = figures.backlog(session, tenant_id=tenant_id).counts
    return tenant_id, counts.get(status, 0) if status else sum(counts.values())


def confirm_destructive(what: str, *, yes: bool) -> None:
    """Go on only with --yes, or when the person at a terminal says so: a destructive
    command run by a script without --yes stops (exit 1) before touching anything."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            f"this would {what}; nothing was done. Pass --yes to confirm (no terminal to ask)"
        )
    if not click.confirm(f"This will {what}. Go on?", default=False, err=True):
        raise click.ClickException("nothing was done")
