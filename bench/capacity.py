"""Unit costs for docs/capacity.md, and a check of the model they make against a mixed run.

    .venv/bin/python -m bench.capacity [--small 2000] [--videos 20] [--video-mb 8] [--mixed 2000]

One stack on 127.0.0.1, as production runs it: PostgreSQL, Redis, moto's S3 server, the
Titan simulator, one receiver (log level INFO) and one Celery worker with two pool processes.
Every media goes in as a signed webhook over HTTP and is archived by the worker.

1. Unit costs, each from its own phase: CPU seconds of the receiver's and the worker's process
   trees and of PostgreSQL's, WAL bytes, and the growth of the database's tables per small
   media (``--small`` photos of 150 KB); the worker's CPU per MB moved (``--videos`` videos
   of ``--video-mb`` MB); and Redis memory per row waiting in the broker (rows published
   to a queue nobody consumes).
2. The model: those unit costs times the counts of a mixed run (``--mixed`` media, 10%
   videos, the rest photos) predict its CPU, WAL and table growth; the run is made and
   measured, and the bench prints both and how far off the prediction was.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from sqlalchemy import text
from sqlmodel import col, func, select

from archiver.infra.broker import make_celery
from archiver.infra.db import session_scope
from archiver.settings import load_settings
from archiver.tables import Media, Status
from bench.transfers import Rig
from devstack.processes import wait_until
from receiver.publisher import Publisher
from titan_simulator.sender import SentMedia, post_signed

MB = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it, reaped ones included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS  # utime stime cutime cstime
    return own + sum(tree_cpu(int(c)) for c in children)


@dataclass
class Reading:
    receiver: float
    worker: float
    postgres: float
    wal: float  # bytes
    tables: float  # bytes

    def less_idle(self, idle: Reading, seconds: float) -> Reading:
        """What the work cost: this reading less what the processes use idle in ``seconds``."""
        return self.minus(scaled(idle, seconds))

    def plus(self, other: Reading) -> Reading:
        return self.minus(scaled(other, -1))

    def minus(self, other: Reading) -> Reading:
        return Reading(
            self.receiver - other.receiver,
            self.worker - other.worker,
            self.postgres - other.postgres,
            self.wal - other.wal,
            self.tables - other.tables,
        )


class Meter:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        with session_scope(rig.engine) as session:
            directory = session.execute(text("SHOW data_directory")).scalar_one()
        try:
            self.postmaster = int(Path(directory, "postmaster.pid").read_text().split()[0])
        except OSError:
            self.postmaster = 0  # not readable here: PostgreSQL's CPU is not measured

    def read(self) -> Reading:
        with session_scope(self.rig.engine) as session:
            wal = session.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
            ).scalar_one()
            tables = session.execute(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r'"
                )
            ).scalar_one()
        return Reading(
            receiver=tree_cpu(self.rig.procs[1].proc.pid),
            worker=tree_cpu(self.rig.procs[2].proc.pid),
            postgres=tree_cpu(self.postmaster) if self.postmaster else 0.0,
            wal=float(wal),
            tables=float(tables),
        )


def send_all(rig: Rig, items: list[SentMedia], *, rate: float) -> None:
    """Post every item as a signed webhook at about ``rate`` per second; wait until archived."""
    client = httpx.Client(timeout=30)
    started = time.monotonic()

    def post(pair: tuple[int, SentMedia]) -> None:
        n, item = pair
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        url = f"{rig.receiver_url}/webhooks/bench"
        assert post_signed(client, url, rig.hmac_key, item.envelope).status_code == 202

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, enumerate(items)))
    client.close()
    ids = [i.media_id for i in items]

    def archived() -> bool:
        with session_scope(rig.engine) as session:
            done = session.exec(
                select(func.count()).where(
                    col(Media.media_id).in_(ids), Media.status == Status.ARCHIVED
                )
            ).one()
        return int(done) == len(ids)

    wait_until(archived, timeout=1800, interval=0.2)
    time.sleep(2)  # the worker's last commits and the beat's fold


def broker_bytes_per_row(redis_url: str, rows: int) -> float:
    """Redis memory per row waiting in the broker: rows published to a queue no worker reads,
    in batch tasks as the receiver publishes a burst."""
    client = redis.Redis.from_url(redis_url)
    settings = load_settings(broker_url=redis_url, secret_key="x" * 24)
    publisher = Publisher(make_celery(settings), redis_url)
    queue = "capacity-unconsumed"
    before = int(client.info("memory")["used_memory"])
    for start in range(1, rows + 1, 100):  # bursts of 100, like group commits under load
        publisher.publish([(pk, queue) for pk in range(start, start + 100)])
    after = int(client.info("memory")["used_memory"])
    publisher.close()
    client.delete(queue)
    return (after - before) / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--video-mb", type=int, default=8)
    parser.add_argument("--mixed", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    rig = Rig(2, "postgres", log_level="INFO")
    try:
        meter = Meter(rig)
        rig.archive(rig.make(20, 150_000, "image"))  # warm-up: imports, clients, connections
        before, began = meter.read(), time.monotonic()
        time.sleep(args.idle_seconds)  # what the processes cost doing nothing (beat, probes)
        idle = scaled(meter.read().minus(before), 1 / (time.monotonic() - began))
        small = rig.make(args.small, 150_000, "image")
        before, began = meter.read(), time.monotonic()
        send_all(rig, small, rate=args.rate)
        spent = meter.read().minus(before).less_idle(idle, time.monotonic() - began)
        per_small = scaled(spent, 1 / args.small)
        videos = rig.make(args.videos, args.video_mb * MB, "video")
        before, began = meter.read(), time.monotonic()
        send_all(rig, videos, rate=args.rate)
        moved = meter.read().minus(before).less_idle(idle, time.monotonic() - began)
        video_mb = args.videos * args.video_mb
        worker_per_mb = (moved.worker - per_small.worker * args.videos) / video_mb
        broker = broker_bytes_per_row(rig.redis_url, 20_000)

        count_videos = args.mixed // 10
        count_small = args.mixed - count_videos
        mixed = rig.make(count_videos, args.video_mb * MB, "video") + rig.make(
            count_small, 150_000, "image"
        )
        mixed.sort(key=lambda _: secrets.randbelow(1 << 30))  # videos spread through the run
        work = Reading(
            receiver=per_small.receiver * args.mixed,
            worker=per_small.worker * args.mixed + worker_per_mb * count_videos * args.video_mb,
            postgres=per_small.postgres * args.mixed,
            wal=per_small.wal * args.mixed,
            tables=per_small.tables * args.mixed,
        )
        started = time.monotonic()
        before = meter.read()
        send_all(rig, mixed, rate=args.rate)
        measured = meter.read().minus(before)
        seconds = time.monotonic() - started
        predicted = work.plus(scaled(idle, seconds))  # the idle part, for as long as it ran
    finally:
        rig.close()
    python = sys.version.split()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
    print(
        "stack: PostgreSQL, Redis, moto, simulator, 1 receiver (INFO), 1 worker x 2 processes; "
        f"webhooks at {args.rate:g}/s over HTTP"
    )
    print("idle, per second (beat, probes, pools)")
    print(
        f"  receiver {idle.receiver * 1e3:.1f} ms, worker {idle.worker * 1e3:.1f} ms, "
        f"PostgreSQL {idle.postgres * 1e3:.1f} ms CPU; WAL {idle.wal:.0f} bytes"
    )
    print("unit costs (idle use taken out)")
    print(f"  receiver CPU per webhook          {per_small.receiver * 1e6:10.0f} us")
    print(f"  worker CPU per small file         {per_small.worker * 1e6:10.0f} us (150 KB)")
    print(f"  worker CPU per MB moved           {worker_per_mb * 1e6:10.0f} us")
    print(f"  PostgreSQL CPU per media          {per_small.postgres * 1e6:10.0f} us")
    print(f"  WAL per media (insert..archived)  {per_small.wal:10.0f} bytes")
    print(f"  tables per media (indexes incl.)  {per_small.tables:10.0f} bytes")
    print(f"  Redis per row waiting             {broker:10.0f} bytes")
    print(
        f"mixed run: {args.mixed} media ({count_videos} videos of {args.video_mb} MB), "
        f"{seconds:.0f}s"
    )
    print(f"  {'':<22}{'predicted':>12}{'measured':>12}{'off':>8}")
    for name, unit, p, m in (
        ("receiver CPU", "s", predicted.receiver, measured.receiver),
        ("worker CPU", "s", predicted.worker, measured.worker),
        ("PostgreSQL CPU", "s", predicted.postgres, measured.postgres),
        ("WAL", "MB", predicted.wal / MB, measured.wal / MB),
        ("table growth", "MB", predicted.tables / MB, measured.tables / MB),
    ):
        off = f"{(p - m) / m * 100:+.0f}%" if m else "-"
        print(f"  {name + ' (' + unit + ')':<22}{p:>12.2f}{m:>12.2f}{off:>8}")


def scaled(reading: Reading, factor: float) -> Reading:
    return Reading(
        reading.receiver * factor,
        reading.worker * factor,
        reading.postgres * factor,
        reading.wal * factor,
        reading.tables * factor,
    )


if __name__ == "__main__":
    main()
