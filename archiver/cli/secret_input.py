"""Secrets on the command line without putting them in argv: every secret option ``--x`` also
comes as ``--x-file PATH`` (``-`` reads standard input) and ``--x-env NAME`` (an environment
variable), so it stays out of ``ps`` and shell history."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def secret_option(flag: str, help: str) -> Callable[[F], F]:
    """Add ``flag``, ``flag-file`` and ``flag-env`` to a command (all optional)."""
    dest = flag.lstrip("-").replace("-", "_")

    def decorate(func: F) -> F:
        func = click.option(
            f"{flag}-env",
            f"{dest}_env",
            default=None,
            metavar="NAME",
            help=f"Read {flag.lstrip('-')} from this environment variable.",
        )(func)
        func = click.option(
            f"{flag}-file",
            f"{dest}_file",
            default=None,
            metavar="PATH",
            help=f"Read {flag.lstrip('-')} from this file ('-': standard input).",
        )(func)
        return click.option(flag, dest, default=None, help=help)(func)

    return decorate


def read_secret(
    flag: str, options: dict[str, Any], *, stdin_used: list[str] | None = None
) -> str | None:
    """The secret ``flag`` names, from exactly one of its three sources, or None if none.

    Pops the three options from ``options``. ``stdin_used`` records which flag read standard
    input, which only one may.
    """
    dest = flag.lstrip("-").replace("-", "_")
    value: str | None = options.pop(dest, None)
    path = options.pop(f"{dest}_file", None)
    env = options.pop(f"{dest}_env", None)
    given = [source for source in (value, path, env) if source is not None]
    if len(given) > 1:
        raise click.UsageError(f"give {flag} once: as a value, {flag}-file or {flag}-env")
    if path is not None:
        if path == "-":
            if stdin_used is not None:
                if stdin_used:
                    raise click.UsageError(f"{flag}-file - : {stdin_used[0]} already read stdin")
                stdin_used.append(flag)
            return _one_line(sys.stdin.read(), f"{flag}-file -")
        try:
            with open(path, encoding="utf-8") as handle:
                return _one_line(handle.read(), f"{flag}-file")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    if env is not None:
        found = os.environ.get(env)
        if found is None:
            raise click.BadParameter(
                f"environment variable {env} is not set", param_hint=f"{flag}-env"
            )
        return found
    return value


def _one_line(text: str, where: str) -> str:
    """A secret file holds the secret, perhaps with a trailing newline; nothing else."""
    secret = text.rstrip("\r\n")
    if not secret or "\n" in secret:
        raise click.BadParameter(f"{where}: expected the secret alone on one line")
    return secret
