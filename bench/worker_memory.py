"""Peak RSS of a Celery worker process archiving large files, next to its idle RSS.

    .venv/bin/python -m bench.worker_memory [--sizes-mb 64,70,200] [--part-size-mb 8]
        [--latency-ms 40] [--parts-in-flight 4]

Starts its own Redis, S3 endpoint (moto), Titan simulator and one worker process
(prefork, concurrency 1) on 127.0.0.1. The pool child's peak RSS is read from the
kernel (VmHWM, reset through /proc/PID/clear_refs before each file), not sampled.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

from archiver.infra import migrate
from archiver.infra.broker import make_celery, publish_archive
from archiver.infra.db import make_engine, session_scope
from archiver.media import query as queries
from archiver.secrets_box import SecretBox
from archiver.settings import load_settings
from archiver.tables import Status
from archiver.tenants.tenants import create_tenant
from devstack import processes, services
from devstack.fixtures import local_spec, record_item
from devstack.tcp_proxy import TcpProxy
from receiver.envelope import media_item
from titan_simulator.sender import Simulator

MB = 1_000_000


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pool_child(pid: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise TimeoutError("no worker pool process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="64,70,200")
    parser.add_argument("--part-size-mb", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="S3 round trip to add")
    parser.add_argument("--parts-in-flight", type=int, default=0, help="0: the default")
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes_mb.split(",")]
    master = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)

    with services.redis_server() as redis_url, services.s3_server() as s3_url:
        proxy = None
        if args.latency_ms:
            proxy = TcpProxy(int(s3_url.rsplit(":", 1)[1]), latency=args.latency_ms / 1000)
            s3_url = f"http://127.0.0.1:{proxy.port}"
        env = {
            "ARCHIVER_DATABASE_URL": db_url,
            "ARCHIVER_BROKER_URL": redis_url,
            "ARCHIVER_SECRET_KEY": master,
            "ARCHIVER_PART_SIZE": str(args.part_size_mb * 1024 * 1024),
        }
        if args.parts_in_flight:
            env["ARCHIVER_UPLOAD_PARTS_IN_FLIGHT"] = str(args.parts_in_flight)
        settings = load_settings(database_url=db_url, broker_url=redis_url, secret_key=master)
        simulator = services.start_simulator("bench-sim")
        sim_proc = simulator.process
        worker = processes.start_process("bench-worker", processes.worker_argv(concurrency=1), env)
        try:
            sim = Simulator(simulator.url)
            sim.add_account(api_key="titan_bench", account="bench")
            services.s3_client(s3_url).create_bucket(Bucket="bench")
            with session_scope(engine) as session:
                tenant, _ = create_tenant(
                    session,
                    box=SecretBox(master),
                    spec=local_spec(
                        "bench",
                        bucket="bench",
                        s3_endpoint=s3_url,
                        titan_url=simulator.url,
                        titan_api_key="titan_bench",
                    ),
                )
            celery = make_celery(settings)

            def archive(size: int) -> float:
                item = media_item(
                    sim.make_media(account="bench", message_type="video", size=size).envelope
                )
                assert item is not None
                pk = record_item(engine, tenant=tenant, item=item).pk
                started = time.monotonic()
                publish_archive(celery, pk=pk)

                def done() -> bool:
                    with session_scope(engine) as session:
                        row = queries.get_row(session, pk=pk)
                    assert row is not None and row.status != Status.FAILED, row
                    return row.status == Status.ARCHIVED

                processes.wait_until(done, timeout=600, interval=0.05)
                return time.monotonic() - started

            archive(100_000)  # warm-up: imports, connections, clients
            child = pool_child(worker.proc.pid)
            idle_kb = status_kb(child, "VmRSS")
            python = sys.version.split()[0]
            print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
            in_flight = args.parts_in_flight or settings.upload_parts_in_flight
            far = f", S3 {args.latency_ms:g} ms away" if args.latency_ms else ""
            print(
                f"part size: {args.part_size_mb} MiB, {in_flight} parts in flight{far}; "
                f"worker pool process pid {child}"
            )
            heads = ("idle RSS", "peak RSS", "peak-idle")
            print(
                f"{'file':>8} "
                + " ".join(f"{h:>10}" for h in heads)
                + f" {'seconds':>8} {'MB/s':>7}"
            )
            for size in sizes:
                Path(f"/proc/{child}/clear_refs").write_text("5")  # reset VmHWM to current RSS
                seconds = archive(size)
                peak_kb = status_kb(child, "VmHWM")
                print(
                    f"{size // MB:>6}MB {idle_kb / 1024:>8.1f}MB {peak_kb / 1024:>8.1f}MB "
                    f"{(peak_kb - idle_kb) / 1024:>8.1f}MB {seconds:>8.2f} "
                    f"{size / MB / seconds:>7.1f}"
                )
            celery.close()
            sim.close()
        finally:
            worker.stop()
            sim_proc.stop()
            engine.dispose()
            if proxy is not None:
                proxy.close()


if __name__ == "__main__":
    main()
