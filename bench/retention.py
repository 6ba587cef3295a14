"""Retention deleting a million rows: its rate, and what it does to ingest meanwhile.

    .venv/bin/python -m bench.retention [--rows 1000000] [--objects 2000] [--seconds 15]

PostgreSQL, Redis and one receiver under the Procfile's web line, all on 127.0.0.1.

1. rows: ``--rows`` expired rows of one tenant (failed transfers: no object, so this is the
   database's part alone) are loaded with COPY. Ingest (the same closed loop as
   ``bench.ingest``) runs alone, then again while retention deletes them
   (``erasure.erase``, the beat's path, without its per-pass cap); then the deletion runs
   on to the end. Printed: ingest req/s and p99 alone and during, and rows deleted per
   second during and overall.
2. objects: ``--objects`` archived rows whose objects sit in moto behind a proxy adding
   ``--latency-ms`` round trip: deleted one at a time (the old path) on a sample, then
   ``erasure.CONCURRENCY`` at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import psycopg
from sqlalchemy import Engine, func
from sqlmodel import col, select

from archiver.governance import erasure
from archiver.infra.db import make_engine, session_scope
from archiver.reporting import totals
from archiver.secrets_box import SecretBox
from archiver.tables import Media, Tenant, utcnow
from archiver.tenants.tenants import TenantSpec, create_tenant
from bench.ingest import serve
from bench.loadgen import Load, run_load
from bench.reconcile import client
from devstack import services
from devstack.fixtures import migrated_database, seed_archived
from devstack.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HMAC_KEY = "bench-hmac-key"


def load_expired(conninfo: str, tenant_id: int, rows: int) -> None:
    """``rows`` failed rows received 400 to 200 days ago (COPY, indexes kept)."""
    start = utcnow() - timedelta(days=400)
    step = timedelta(days=200) / rows
    columns = (
        "tenant_id, media_id, session, message_type, strategy, persisted, status, attempts, "
        "received_at, updated_at, file_length, chat, sender, sender_name"
    )
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY media ({columns}) FROM STDIN") as copy:
            for i in range(rows):
                at = start + step * i
                contact = f"+55119{i % 5000:05d}"
                row = (tenant_id, f"OLD{i:09d}", "s1", "image", "download", False, "failed", 8)
                copy.write_row((*row, at, at, 100_000, contact, contact, f"Contact {i % 5000}"))
        cur.execute("ANALYZE media")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--serial-sample", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    master = secrets.token_urlsafe(24)
    with (
        services.postgres_server() as admin_url,
        services.redis_server() as redis_url,
        services.s3_server() as s3_url,
        migrated_database("postgres", Path(tempfile.mkdtemp()), admin_url) as db_url,
    ):
        engine = make_engine(db_url)
        with session_scope(engine) as session:
            tenant, _ = create_tenant(
                session,
                box=SecretBox(master),
                spec=TenantSpec(
                    name="acme",
                    hmac_key=HMAC_KEY,
                    titan_url="http://t",
                    titan_api_key="x",
                    strategy="download",
                    s3_bucket="b",
                ),
            )
            session.expunge(tenant)
        started = time.monotonic()
        load_expired(db_url, tenant.id or 0, args.rows)
        totals.fold(engine)
        print(f"loaded {args.rows:,} expired rows in {time.monotonic() - started:.0f}s")
        env = {
            "ARCHIVER_DATABASE_URL": db_url,
            "ARCHIVER_BROKER_URL": redis_url,
            "ARCHIVER_SECRET_KEY": master,
            "ARCHIVER_LOG_LEVEL": "INFO",
        }
        proc, url = serve("bench-retention-web", None, env)
        try:
            alone = ingest(url, "A", args)
            deleting, during = rows_phase(engine, tenant, url, args)
        finally:
            proc.stop()
        objects = objects_phase(engine, s3_url, master, args)
        engine.dispose()
    python = sys.version.split()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
    print(f"ingest: {alone.tool}, {args.connections} connections, {args.seconds:.0f}s each")
    print(f"{'ingest':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, load in (("alone", alone), ("while retention deletes", during)):
        print(f"{name:<28}{load.rps:>10.0f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}{load.non_2xx:>9}")
    print(f"ingest during deletion: {during.rps / alone.rps:.2f} of alone")
    print(
        f"rows deleted: {deleting.during:,} while ingest ran "
        f"({deleting.during / during.seconds:,.0f}/s); "
        f"all {deleting.total:,} in {deleting.seconds:.0f}s "
        f"({deleting.total / deleting.seconds:,.0f}/s); left: {deleting.left}"
    )
    print(
        f"objects {args.latency_ms:g} ms away: one at a time {objects[0]:.1f}/s, "
        f"{erasure.CONCURRENCY} at a time {objects[1]:.1f}/s ({objects[1] / objects[0]:.1f}x)"
    )


def ingest(url: str, run: str, args: argparse.Namespace) -> Load:
    return run_load(
        f"{url}/webhooks/acme",
        hmac_key=HMAC_KEY,
        run=run,
        count=400_000,
        connections=args.connections,
        seconds=args.seconds,
    )


class Deleting:
    def __init__(self) -> None:
        self.during = self.total = self.left = 0
        self.seconds = 0.0


def rows_phase(
    engine: Engine, tenant: Tenant, url: str, args: argparse.Namespace
) -> tuple[Deleting, Load]:
    found = Deleting()
    cutoff = utcnow() - timedelta(days=30)
    chunks: list[tuple[float, int]] = []  # (when it ended, rows deleted): 50 pages each

    def delete_all() -> None:
        began = time.monotonic()
        while True:
            done = erasure.erase(
                engine,
                tenant,
                erasure.Selector(received_before=cutoff),
                # The seeded rows name no objects: the bucket is never asked.
                s3_for=lambda _: cast("S3Client", None),
                max_batches=50,
            )
            chunks.append((time.monotonic(), done.rows))
            if not done.rows:
                break
        found.seconds = time.monotonic() - began

    deleter = threading.Thread(target=delete_all)
    deleter.start()
    during = ingest(url, "D", args)
    ended = time.monotonic()
    # The load ran for the last ``seconds`` before it returned (its signatures come first).
    found.during = sum(n for at, n in chunks if ended - during.seconds <= at <= ended)
    deleter.join()
    found.total = sum(n for _, n in chunks)
    with session_scope(engine) as session:
        found.left = session.exec(
            select(func.count()).select_from(Media).where(col(Media.received_at) < cutoff)
        ).one()
    return found, during


def objects_phase(
    engine: Engine, s3_url: str, master: str, args: argparse.Namespace
) -> tuple[float, float]:
    proxy = TcpProxy(int(s3_url.rsplit(":", 1)[1]), latency=args.latency_ms / 1000)
    far = f"http://127.0.0.1:{proxy.port}"
    try:
        seeded = seed_archived(
            engine,
            s3_endpoint=s3_url,
            count=args.objects,
            tenant_endpoint=far,
            master_key=master,
            received_at=utcnow() - timedelta(days=400),
        )
        s3 = client(far, 10)
        rates = []
        concurrency = erasure.CONCURRENCY
        for width, count in ((1, args.serial_sample), (concurrency, args.objects)):
            erasure.CONCURRENCY = width
            began = time.monotonic()
            done = erasure.erase(
                engine,
                seeded.tenant,
                erasure.Selector(received_before=utcnow()),
                s3_for=lambda _: s3,
                batch=min(200, count),
                max_batches=max(1, count // 200),
            )
            rates.append(done.rows / (time.monotonic() - began))
        erasure.CONCURRENCY = concurrency
        return rates[0], rates[1]
    finally:
        proxy.close()


if __name__ == "__main__":
    main()
