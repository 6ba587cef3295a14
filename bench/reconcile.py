"""`reconcile` against a bucket 40 ms away: objects checked per second, beside the limit.

    .venv/bin/python -m bench.reconcile [--objects 10000] [--latency-ms 40] [--concurrency 16,32]

Starts moto's S3 server on 127.0.0.1 behind a proxy that delays every byte by half the
round trip in each direction (devstack/tcp_proxy.py), a migrated SQLite database with
``--objects`` archived rows of one tenant, and their objects in the tenant's bucket. For each
concurrency it runs the real check (``reconcile.check_buckets``: pages of rows, HEADs in a
bounded pool, progress saved per page) and, as the limit, a plain loop of concurrent
``head_object`` calls over the same keys with the same client settings and nothing else.
The old one-at-a-time check is the ``1`` column, run on a sample (``--serial-sample``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from sqlalchemy import Engine

from archiver.cli import reconcile as reconciling
from archiver.infra import migrate
from archiver.infra.broker import make_celery
from archiver.infra.buckets import make_s3_client
from archiver.infra.db import make_engine
from archiver.settings import Settings, load_settings
from devstack import services
from devstack.fixtures import seed_archived
from devstack.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--concurrency", default="16,32")
    parser.add_argument("--serial-sample", type=int, default=300)
    args = parser.parse_args()
    master = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    settings = load_settings(database_url=db_url, secret_key=master)
    with services.s3_server() as direct_url:
        proxy = TcpProxy(int(direct_url.rsplit(":", 1)[1]), latency=args.latency_ms / 1000)
        far_url = f"http://127.0.0.1:{proxy.port}"
        try:
            seeded = seed_archived(
                engine,
                s3_endpoint=direct_url,
                count=args.objects,
                tenant_endpoint=far_url,
                master_key=master,
            )
            keys = [f"media/{n}.bin" for n in range(args.objects)]
            bucket = seeded.bucket
            python = sys.version.split()[0]
            print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
            print(
                f"S3: moto behind a proxy adding {args.latency_ms:g} ms round trip; "
                f"{args.objects} objects of one tenant; database sqlite"
            )
            print(f"{'concurrency':<14}{'limit (obj/s)':>15}{'reconcile (obj/s)':>19}{'ratio':>8}")
            celery = make_celery(settings)
            for width in [int(c) for c in args.concurrency.split(",") if c]:
                limit = plain_heads(far_url, bucket, keys, width)
                started = time.monotonic()
                report = reconciling.check_buckets(
                    engine, celery, settings, tenant_name=None, requeue=False, concurrency=width
                )
                ours = report.checked / (time.monotonic() - started)
                assert report.checked == report.ok == len(keys), report
                print(f"{width:<14}{limit:>15.1f}{ours:>19.1f}{ours / limit:>8.2f}")
            sample = keys[: args.serial_sample]
            limit = plain_heads(far_url, bucket, sample, 1)
            reconciling_page = reconciling.PAGE
            started = time.monotonic()
            checked = serial_sample(engine, celery, settings, len(sample))
            ours = checked / (time.monotonic() - started)
            reconciling.PAGE = reconciling_page
            print(f"{'1 (sample)':<14}{limit:>15.1f}{ours:>19.1f}{ours / limit:>8.2f}")
            celery.close()
        finally:
            proxy.close()
            engine.dispose()


def serial_sample(engine: Engine, celery: Celery, settings: Settings, count: int) -> int:
    """The one-at-a-time check over the first ``count`` rows: stopped after that many."""
    reconciling.PAGE = count
    seen: list[int] = []

    def stop(n: int) -> None:
        seen.append(n)
        raise _Enough

    with contextlib.suppress(_Enough):
        reconciling.check_buckets(
            engine,
            celery,
            settings,
            tenant_name=None,
            requeue=False,
            concurrency=1,
            progress=stop,
        )
    return sum(seen)


class _Enough(Exception):
    pass


def plain_heads(endpoint: str, bucket: str, keys: list[str], width: int) -> float:
    s3 = client(endpoint, width)
    started = time.monotonic()
    with ThreadPoolExecutor(width) as pool:
        list(pool.map(lambda k: s3.head_object(Bucket=bucket, Key=k), keys))
    return len(keys) / (time.monotonic() - started)


def client(endpoint: str, connections: int) -> S3Client:
    return make_s3_client(
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=connections,
    )


if __name__ == "__main__":
    main()
