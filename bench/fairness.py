"""Fairness: one tenant's burst of large files against another tenant's photos.

    .venv/bin/python -m bench.fairness [--large 2000] [--seconds 60] [--slow-ms 350]

Tenant A has ``--large`` large files queued (3 MB videos; ``ARCHIVER_LARGE_MEDIA_BYTES`` is
2 MiB here, so they travel on the large queue). Then tenant B sends one 50 KB photo every
half second for ``--seconds``. The Titan simulator delays every 256 KB chunk by
``--slow-ms`` (a far-away Titan: each of A's files takes seconds, as a 70 MB video does over
a real link; B's photo is one chunk). B's latency is webhook accepted -> row archived
(``archived_at - received_at``). Two runs side by side, each on a fresh stack (SQLite,
Redis, moto, the simulator, one receiver, one worker of two slots running beat, the
product's default timings): no cap, then ``ARCHIVER_TENANT_MAX_CONCURRENCY=1``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media, Tenant
from devstack import services
from devstack.fixtures import TenantSetup, add_tenant, migrated_database, running_archiver
from devstack.fixtures import process_env as base_env
from titan_simulator.sender import Simulator, post_signed

MB = 1024 * 1024


def _send(
    client: httpx.Client, url: str, tenant: TenantSetup, sim: Simulator, kind: str, size: int
) -> None:
    media = sim.make_media(account=tenant.name, message_type=kind, size=size)
    answer = post_signed(client, f"{url}/webhooks/{tenant.name}", tenant.hmac_key, media.envelope)
    assert answer.status_code == 202, answer.text


def _rows(database_url: str, name: str) -> list[Media]:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            tenant = session.exec(select(Tenant).where(Tenant.name == name)).one()
            return list(session.exec(select(Media).where(Media.tenant_id == tenant.id)))
    finally:
        engine.dispose()


def run(cap: int, args: argparse.Namespace) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-fair-") as tmp_name,
        services.redis_server() as broker,
        services.s3_server() as s3_endpoint,
    ):
        tmp = Path(tmp_name)
        with migrated_database("sqlite", tmp, None) as database_url:
            env = base_env(
                database_url,
                broker,
                ARCHIVER_LARGE_MEDIA_BYTES=str(2 * MB),
                ARCHIVER_TENANT_MAX_CONCURRENCY=str(cap),
                # The product's defaults, not the tests' short ones.
                ARCHIVER_RETRY_BASE_SECONDS="5",
                ARCHIVER_RETRY_MAX_SECONDS="600",
                ARCHIVER_DISPATCH_INTERVAL_SECONDS="5",
                ARCHIVER_LOG_LEVEL="WARNING",
            )
            with (
                running_archiver("fair", env, tmp) as (web, sim),
                httpx.Client(timeout=30) as client,
            ):
                a = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="burst-a")
                b = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="photos-b")
                sim.set_faults(slow_ms=args.slow_ms)
                url = web.receiver_url
                with ThreadPoolExecutor(8) as pool:
                    list(
                        pool.map(
                            lambda _: _send(client, url, a, sim, "video", 3 * MB),
                            range(args.large),
                        )
                    )
                started = time.monotonic()
                sent = 0
                while time.monotonic() - started < args.seconds:
                    _send(client, url, b, sim, "image", 50_000)
                    sent += 1
                    time.sleep(max(0.0, started + sent * 0.5 - time.monotonic()))
                a_done = sum(r.status == "archived" for r in _rows(database_url, a.name))
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    rows = _rows(database_url, b.name)
                    if len(rows) == sent and all(r.status == "archived" for r in rows):
                        break
                    time.sleep(1)
                rows = _rows(database_url, b.name)
                sim.set_faults()
    waits = sorted(
        (r.archived_at - r.received_at).total_seconds()
        for r in rows
        if r.archived_at is not None and r.received_at is not None
    )
    missing = sent - len(waits)
    waits += [float("inf")] * missing
    return {
        "photos": float(sent),
        "p50": statistics.median(waits),
        "p99": waits[max(0, int(len(waits) * 0.99) - 1)],
        "max": waits[-1],
        "a_archived": float(a_done),
        "not_archived": float(missing),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--slow-ms", type=int, default=350)
    args = parser.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
    )
    print(
        f"tenant A: {args.large} x 3 MB queued; tenant B: a 50 KB photo every 0.5 s for "
        f"{args.seconds:g} s; titan {args.slow_ms} ms per 256 KB chunk; 1 worker x 2 slots"
    )
    print(f"{'cap':<22}{'photos':>8}{'p50 s':>9}{'p99 s':>9}{'max s':>9}{'A done':>9}{'lost':>6}")
    results = {}
    for cap in (0, 1):
        figures = run(cap, args)
        results[cap] = figures
        label = "none" if cap == 0 else f"TENANT_MAX_CONCURRENCY={cap}"
        print(
            f"{label:<22}{figures['photos']:>8.0f}{figures['p50']:>9.2f}{figures['p99']:>9.2f}"
            f"{figures['max']:>9.2f}{figures['a_archived']:>9.0f}{figures['not_archived']:>6.0f}",
            flush=True,
        )
    ratio = results[0]["p99"] / results[1]["p99"] if results[1]["p99"] else float("inf")
    print(f"B's p99 with the cap: {results[1]['p99']:.2f} s (target < 5 s); {ratio:.1f}x lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
