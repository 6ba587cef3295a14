"""`media export-bundle` beside a plain copy of the same objects: files/s, MB/s, ratio, and
the process's memory growth while exporting.

    .venv/bin/python -m bench.export_bundle [--objects 10000] [--size 20000] [--rounds 2]

moto's S3 server on 127.0.0.1 holds ``--objects`` archived files of ``--size`` bytes of one
tenant (a migrated SQLite database has their rows). Each round runs, alternated, the plain
copy (the rows' keys read once, then one GET each streamed to a file with the same client,
nothing else) and the real export (bundle.export: the rows a page at a time, each file
streamed and hashed, its thumbnail looked up, metadata.jsonl, the ledger and audit records,
index.html, the bagit tag files). Memory is the resident set sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import col, select

from archiver.governance import bundle
from archiver.infra import migrate
from archiver.infra.buckets import make_s3_client
from archiver.infra.db import make_engine, session_scope
from archiver.media.query import MediaQuery
from archiver.tables import Media, Tenant, utcnow
from devstack import services
from devstack.fixtures import seed_archived

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """The highest resident set seen while it runs."""

    def __init__(self) -> None:
        self.base = rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    with services.s3_server() as url:
        seeded = seed_archived(engine, s3_endpoint=url, count=args.objects)
        s3 = make_s3_client(
            endpoint=url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            connect_timeout=10,
            read_timeout=60,
        )
        _resize(engine, s3, seeded.tenant, args.size)
        for round_ in range(1, args.rounds + 1):
            plain_dir, bag_dir = tmp / f"plain-{round_}", tmp / f"bag-{round_}"
            with Peak() as plain_memory:
                started = time.perf_counter()
                copied = _plain_copy(engine, s3, seeded.tenant, plain_dir)
                plain = time.perf_counter() - started
            with Peak() as bag_memory:
                started = time.perf_counter()
                done = bundle.export(
                    engine,
                    seeded.tenant,
                    MediaQuery(),
                    s3=s3,
                    out=bag_dir,
                    who="bench",
                    now=utcnow(),
                )
                exported = time.perf_counter() - started
            assert done.files == copied == args.objects
            megabytes = done.bytes / 1e6
            grew = (plain_memory.peak - plain_memory.base) / 1e6
            grew_bag = (bag_memory.peak - bag_memory.base) / 1e6
            print(
                f"round {round_}: plain copy {copied / plain:,.0f} files/s "
                f"{megabytes / plain:.1f} MB/s (+{grew:.1f} MB); export-bundle "
                f"{done.files / exported:,.0f} files/s {megabytes / exported:.1f} MB/s "
                f"(+{grew_bag:.1f} MB); ratio {plain / exported:.2f} (target >= 0.8)"
            )
            shutil.rmtree(plain_dir)
            shutil.rmtree(bag_dir)
    engine.dispose()
    shutil.rmtree(tmp, ignore_errors=True)


def _resize(engine: Engine, s3: S3Client, tenant: Tenant, size: int) -> None:
    """Make every seeded object ``size`` bytes (a photo, not a line of text)."""
    with session_scope(engine) as session:
        rows = list(session.exec(select(Media).where(col(Media.tenant_id) == tenant.id)))

    def put(row: Media) -> tuple[int, str]:
        body = hashlib.sha256(row.media_id.encode()).digest() * (size // 32 + 1)
        body = body[:size]
        s3.put_object(Bucket=tenant.s3_bucket, Key=str(row.object_key), Body=body)
        return row.saved_pk, hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(put, rows))
    with session_scope(engine) as session:
        for pk, digest in done:
            row = session.get(Media, pk)
            assert row is not None
            row.sha256, row.size = digest, size
            session.add(row)


def _plain_copy(engine: Engine, s3: S3Client, tenant: Tenant, out: Path) -> int:
    with session_scope(engine) as session:
        keys = [
            str(k)
            for k in session.exec(select(Media.object_key).where(col(Media.tenant_id) == tenant.id))
        ]
    out.mkdir()
    for n, key in enumerate(keys):
        body = s3.get_object(Bucket=tenant.s3_bucket, Key=key)["Body"]
        with (out / f"{n:06d}").open("wb") as target:
            for chunk in body.iter_chunks(1024 * 1024):
                target.write(chunk)
    return len(keys)


if __name__ == "__main__":
    main()
