"""Transfers through the worker against a plain copy, and end-to-end latency.

    .venv/bin/python -m bench.transfers [--large 6] [--large-mb 50] [--small 2000] [--workers 2]
    .venv/bin/python -m bench.transfers --latency-ms 40 --managed-mb 70,200 --large 0 --small 500

Everything runs on 127.0.0.1: Redis, moto's S3 server, the Titan simulator, SQLite, one
receiver and Celery workers. The plain copy is the physical limit of this setup: a script
that streams the same files from the same simulator into the same S3 endpoint with the same
part size and the same concurrency, and does nothing else (no database, no hashing).
With ``--latency-ms`` every S3 request goes through a proxy that delays each byte by half
that in each direction (bandwidth uncapped): a bucket that far away, for both sides.

1. managed: seconds for one file of each ``--managed-mb`` size, against boto3's own managed
   transfer (``upload_fileobj`` with its default TransferConfig) of the same Titan stream.
2. large: MB/s for ``--large`` files of ``--large-mb`` MB.
3. small: items/s for ``--small`` files of 100 KB, ``--workers`` worker processes.
4. e2e:   webhook accepted -> row archived, p50/p99, 100 KB media at a steady 50 events/s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import httpx
from sqlalchemy import func
from sqlmodel import col, select

from archiver.infra.broker import make_celery
from archiver.infra.buckets import make_s3_client
from archiver.infra.db import make_engine, session_scope
from archiver.media.recording import Arrival
from archiver.queue import queue_for
from archiver.secrets_box import SecretBox
from archiver.settings import load_settings
from archiver.tables import Media, Status, utcnow
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import processes, services
from devstack.fixtures import migrated_database, record
from devstack.tcp_proxy import TcpProxy
from receiver.envelope import media_item
from titan_simulator.sender import SentMedia, Simulator, post_signed

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MB = 1_000_000
PART = 8 * 1024 * 1024
TITAN_KEY = "titan_bench"


class StreamReader(io.RawIOBase):
    """A non-seekable file over an HTTP body, as boto3's managed transfer reads one."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = sys.maxsize if size is None or size < 0 else size
        pieces, have = [self._rest], len(self._rest)
        while have < wanted:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        self._rest = data[wanted:]
        return data[:wanted]


class Rig:
    def __init__(
        self,
        workers: int,
        database: str,
        latency_ms: float = 0.0,
        parts_in_flight: int = 0,
        log_level: str = "WARNING",
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-transfers-"))
        self._stack = contextlib.ExitStack()
        self.redis_url = self._stack.enter_context(services.redis_server())
        self.s3_url = self._stack.enter_context(services.s3_server())
        if latency_ms > 0:
            proxy = TcpProxy(int(self.s3_url.rsplit(":", 1)[1]), latency=latency_ms / 1000)
            self._stack.callback(proxy.close)
            self.s3_url = f"http://127.0.0.1:{proxy.port}"
        admin = self._stack.enter_context(services.postgres_server())
        self.db_url = self._stack.enter_context(migrated_database(database, self.tmp, admin))
        self.engine = make_engine(self.db_url)
        self.master = secrets.token_urlsafe(24)
        self.env = {
            "ARCHIVER_DATABASE_URL": self.db_url,
            "ARCHIVER_BROKER_URL": self.redis_url,
            "ARCHIVER_SECRET_KEY": self.master,
            "ARCHIVER_LOG_LEVEL": log_level,
            "ARCHIVER_PART_SIZE": str(PART),
            **(
                {"ARCHIVER_UPLOAD_PARTS_IN_FLIGHT": str(parts_in_flight)} if parts_in_flight else {}
            ),
            "ARCHIVER_WORKER_METRICS_PORT": "0",
        }
        self.large_bytes = load_settings(secret_key=self.master).large_media_bytes
        sim = services.start_simulator("bench-t-sim")
        self.procs = [sim.process]
        receiver = services.start_receiver("bench-t-receiver", self.env, ready="/healthz")
        self.procs.append(receiver.process)
        self.sim_url, self.receiver_url = sim.url, receiver.url
        self.sim = Simulator(self.sim_url)
        self.sim.add_account(api_key=TITAN_KEY, account="bench")
        self.s3 = make_s3_client(
            endpoint=self.s3_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            connect_timeout=5,
            read_timeout=60,
        )
        for bucket in ("ours", "plain"):
            self.s3.create_bucket(Bucket=bucket)
        self.hmac_key = "bench-hmac-key"
        with session_scope(self.engine) as session:
            self.tenant, _ = create_tenant(
                session,
                box=SecretBox(self.master),
                spec=TenantSpec(
                    name="bench",
                    hmac_key=self.hmac_key,
                    titan_url=self.sim_url,
                    titan_api_key=TITAN_KEY,
                    strategy="download",
                    s3_bucket="ours",
                    s3_endpoint=self.s3_url,
                    s3_region="us-east-1",
                    s3_access_key_id="testing",
                    s3_secret_access_key="testing",
                ),
            )
        self.celery = make_celery(
            load_settings(
                database_url=self.db_url, broker_url=self.redis_url, secret_key=self.master
            )
        )
        self.workers = workers
        self.procs.append(
            processes.start_process(
                "bench-t-worker", processes.worker_argv(concurrency=workers), self.env
            )
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.sim.close()
        self.celery.close()
        self.engine.dispose()
        self._stack.close()

    def make(self, count: int, size: int, kind: str) -> list[SentMedia]:
        return [
            self.sim.make_media(account="bench", message_type=kind, size=size) for _ in range(count)
        ]

    # -- our path: rows queued, timed until all archived ------------------------------------

    def archive(self, items: list[SentMedia]) -> float:
        from receiver.publisher import Publisher

        publisher = Publisher(self.celery, self.redis_url)
        parsed = [media_item(i.envelope) for i in items]
        arrivals = [Arrival(self.tenant.id or 0, "download", p) for p in parsed if p is not None]
        started = utcnow()
        recorded = record(self.engine, arrivals)
        publisher.publish(
            [
                (r.pk, queue_for(i.size, i.message_type, large_bytes=self.large_bytes))
                for r, i in zip(recorded, items, strict=True)
            ]
        )
        ids = [i.media_id for i in items]

        finished: list[datetime] = []

        def done() -> bool:
            with session_scope(self.engine) as session:
                rows = session.exec(
                    select(Media.status, Media.archived_at).where(col(Media.media_id).in_(ids))
                ).all()
            assert all(s != Status.FAILED for s, _ in rows), "a transfer failed"
            finished[:] = [at for s, at in rows if s == Status.ARCHIVED and at is not None]
            return len(finished) == len(ids)

        processes.wait_until(done, timeout=1800, interval=0.05)
        publisher.close()
        # From the rows' own times, not when the poll saw them: its 50 ms would count.
        return (max(finished) - started).total_seconds()

    # -- the plain copy: the same bytes, same S3, same part size, same concurrency ----------

    def plain_copy(self, items: list[SentMedia], concurrency: int) -> float:
        client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency))

        def copy(item: SentMedia) -> None:
            url = f"{self.sim_url}/api/sessions/{item.session}/media/{item.media_id}/download"
            with client.stream("POST", url, headers={"Authorization": f"Bearer {TITAN_KEY}"}) as r:
                r.raise_for_status()
                key = f"plain/{item.media_id}"
                buffer = bytearray()
                upload_id = None
                parts: list[CompletedPartTypeDef] = []
                for chunk in r.iter_bytes(256 * 1024):
                    buffer += chunk
                    while len(buffer) >= PART:
                        if upload_id is None:
                            upload_id = self.s3.create_multipart_upload(Bucket="plain", Key=key)[
                                "UploadId"
                            ]
                        answer = self.s3.upload_part(
                            Bucket="plain",
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=len(parts) + 1,
                            Body=bytes(buffer[:PART]),
                        )
                        parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
                        del buffer[:PART]
                if upload_id is None:
                    self.s3.put_object(Bucket="plain", Key=key, Body=bytes(buffer))
                    return
                if buffer:
                    answer = self.s3.upload_part(
                        Bucket="plain",
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=bytes(buffer),
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
                self.s3.complete_multipart_upload(
                    Bucket="plain", Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(copy, items))
        client.close()
        return time.monotonic() - started

    # -- boto3's managed transfer of the same Titan stream, one file -----------------------

    def managed_copy(self, item: SentMedia) -> float:
        client = httpx.Client(timeout=60)
        url = f"{self.sim_url}/api/sessions/{item.session}/media/{item.media_id}/download"
        started = time.monotonic()
        with client.stream("POST", url, headers={"Authorization": f"Bearer {TITAN_KEY}"}) as r:
            r.raise_for_status()
            body = cast("IO[bytes]", StreamReader(r.iter_bytes(256 * 1024)))
            self.s3.upload_fileobj(body, "plain", f"managed/{item.media_id}")
        seconds = time.monotonic() - started
        client.close()
        return seconds

    # -- end to end: signed webhooks at a steady rate, accepted -> archived -----------------

    def e2e(self, rate: float, seconds: float, size: int) -> list[float]:
        items = self.make(int(rate * seconds), size, "image")
        client = httpx.Client(timeout=30)
        started = time.monotonic()
        for n, item in enumerate(items):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            assert (
                post_signed(
                    client, f"{self.receiver_url}/webhooks/bench", self.hmac_key, item.envelope
                ).status_code
                == 202
            )
        client.close()
        ids = [i.media_id for i in items]

        def rows() -> list[tuple[Any, Any, Any]]:
            with session_scope(self.engine) as session:
                return list(
                    session.exec(
                        select(Media.status, Media.received_at, Media.archived_at).where(
                            col(Media.media_id).in_(ids)
                        )
                    )
                )

        processes.wait_until(lambda: all(r[0] == Status.ARCHIVED for r in rows()), timeout=300)
        return sorted(
            (archived - received).total_seconds() * 1000 for _, received, archived in rows()
        )


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=6)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--e2e-seconds", type=float, default=20)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="S3 round trip to add")
    parser.add_argument("--managed-mb", default="", help="sizes for boto3's managed transfer")
    parser.add_argument("--repeat", type=int, default=3, help="runs per managed size (median)")
    parser.add_argument("--parts-in-flight", type=int, default=0, help="0: the setting's default")
    args = parser.parse_args()
    rig = Rig(args.workers, args.database, args.latency_ms, args.parts_in_flight)
    try:
        python = sys.version.split()[0]
        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
        far = f" behind a proxy adding {args.latency_ms:g} ms round trip" if args.latency_ms else ""
        in_flight = (
            args.parts_in_flight or load_settings(secret_key=rig.master).upload_parts_in_flight
        )
        print(
            f"S3: moto{far}; part size {PART // 1024 // 1024} MiB, {in_flight} parts in flight; "
            f"worker processes: {args.workers}; database {args.database}"
        )
        print(f"{'bench':<34}{'limit':>12}{'titan-archiver':>16}{'ratio':>8}  target")
        sizes = [int(s) for s in args.managed_mb.split(",") if s]
        if sizes:  # warm both sides: worker processes' clients, connections, imports
            rig.managed_copy(rig.make(1, 10 * MB, "video")[0])
            rig.archive(rig.make(args.workers * 2, 10 * MB, "video"))
        for size_mb in sizes:
            managed, ours_runs = [], []
            for _ in range(args.repeat):  # interleaved, so drift hits both sides alike
                managed.append(rig.managed_copy(rig.make(1, size_mb * MB, "video")[0]))
                ours_runs.append(rig.archive(rig.make(1, size_mb * MB, "video")))
            m, o = statistics.median(managed), statistics.median(ours_runs)
            print(
                f"{f'managed: 1 x {size_mb} MB (s, median of {args.repeat})':<34}{m:>12.2f}"
                f"{o:>16.2f}{m / o:>8.2f}  >= 0.9   runs: boto3 "
                + " ".join(f"{x:.2f}" for x in managed)
                + ", ours "
                + " ".join(f"{x:.2f}" for x in ours_runs)
            )
        if args.large:
            big = rig.make(args.large, args.large_mb * MB, "video")
            total_mb = args.large * args.large_mb
            plain = rig.plain_copy(rig.make(args.large, args.large_mb * MB, "video"), args.workers)
            ours = rig.archive(big)
            print(
                f"{f'large: {args.large} x {args.large_mb} MB (MB/s)':<34}{total_mb / plain:>12.1f}"
                f"{total_mb / ours:>16.1f}{plain / ours:>8.2f}  >= 0.8"
            )
        if args.small:
            small = rig.make(args.small, 100_000, "image")
            plain = rig.plain_copy(rig.make(args.small, 100_000, "image"), args.workers)
            ours = rig.archive(small)
            target = ">= 0.8" if args.latency_ms else ">= 0.7"
            print(
                f"{f'small: {args.small} x 100 KB (items/s)':<34}{args.small / plain:>12.1f}"
                f"{args.small / ours:>16.1f}{plain / ours:>8.2f}  {target}"
            )
        if args.e2e_seconds:
            latencies = rig.e2e(args.rate, args.e2e_seconds, 100_000)
            print(
                f"e2e at {args.rate:.0f} events/s, {len(latencies)} x 100 KB: accepted -> archived "
                f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 0.99):.0f} ms, "
                f"max {latencies[-1]:.0f} ms (targets: p50 < 150, p99 < 1000)"
            )
        with session_scope(rig.engine) as session:
            failed = session.exec(select(func.count()).where(Media.status == Status.FAILED)).one()
        print(f"failed rows: {failed}")
    finally:
        rig.close()


if __name__ == "__main__":
    main()
