"""Latency of the query API, stats, dashboard overview, /metrics and ``status`` over many
PostgreSQL rows: p50/p99 per query and deep page.

    .venv/bin/python -m bench.query_latency [--rows 10000000] [--tenants 10] [--repeat 200]

Uses PostgreSQL on 127.0.0.1:5432 (a fresh database, dropped afterwards) or an embedded one,
loads the rows with COPY (60% to the first tenant, the rest spread over the others; the
indexes are built after the load, as a restore would), runs ANALYZE, starts one uvicorn
receiver on 127.0.0.1 and asks each query ``--repeat`` times over one keep-alive
connection. Targets: p99 under 30 ms per page of 100; under 50 ms for ``/api/stats``, the
dashboard's overview and a ``/metrics`` scrape.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
from sqlalchemy import text

from archiver.infra.db import make_engine, session_scope
from archiver.reporting import totals
from archiver.secrets_box import SecretBox
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import services
from devstack.fixtures import migrated_database

TYPES = {
    "image": ["image/jpeg", "image/png"],
    "video": ["video/mp4"],
    "audio": ["audio/ogg", "audio/mpeg"],
    "document": ["application/pdf", "application/vnd.ms-excel"],
    "sticker": ["image/webp"],
}
SESSIONS = ["support", "sales", "billing", "ops", "vip", "north", "south", "east", "west", "hq"]
START = datetime(2025, 1, 1, tzinfo=UTC)


def load(conninfo: str, tenant_ids: list[int], rows: int) -> dict[str, str]:
    """COPY ``rows`` media rows (60% to the first tenant); return sample values to query."""
    rng = random.Random(7)
    samples: dict[str, str] = {}
    statuses = ["archived"] * 90 + ["failed"] * 3 + ["queued"] * 5 + ["retrying"] * 2
    columns = (
        "tenant_id, media_id, message_id, session, message_type, mime_type, file_length, sender, "
        "sender_lid, strategy, persisted, status, attempts, received_at, updated_at, bucket, "
        "object_key, size, sha256, chat, is_group, from_me, sender_name"
    )
    groups = [f"1203630{n:05d}@g.us" for n in range(200)]
    step = timedelta(days=180) / rows
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        # Build the secondary indexes once after the load (sorted), not row by row.
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'media' "
            "AND indexname NOT IN ('media_pkey', 'uq_media_tenant_media_id')"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        with cur.copy(f"COPY media ({columns}) FROM STDIN") as copy:
            for i in range(rows):
                tenant = tenant_ids[0] if rng.random() < 0.6 else rng.choice(tenant_ids[1:])
                kind = rng.choice(list(TYPES))
                status = rng.choice(statuses)
                received = START + step * i
                media_id = secrets.token_hex(10).upper()
                message_id = "3EB0" + secrets.token_hex(8).upper()
                sender = f"+55119{rng.randrange(10_000):05d}"
                archived = status == "archived"
                length = rng.randrange(10_000, 80_000_000 if kind == "video" else 3_000_000)
                key = f"acme/{kind}/{media_id}" if archived else None
                # 25% group messages (200 groups), 10% sent by the business itself.
                in_group = rng.random() < 0.25
                chat = rng.choice(groups) if in_group else sender
                from_me = rng.random() < 0.1
                copy.write_row(
                    (
                        tenant,
                        media_id,
                        message_id,
                        rng.choice(SESSIONS),
                        kind,
                        rng.choice(TYPES[kind]),
                        length,
                        sender,
                        f"{rng.randrange(10**9)}@lid",
                        "download",
                        archived,
                        status,
                        1,
                        received,
                        received,
                        "bucket" if archived else None,
                        key,
                        length if archived else None,
                        secrets.token_hex(32) if archived else None,
                        chat,
                        in_group,
                        from_me,
                        None if from_me else f"Contact {sender[-5:]}",
                    )
                )
                if i == rows // 2 and tenant == tenant_ids[0]:
                    samples |= {"messageId": message_id, "sender": sender}
                if in_group and tenant == tenant_ids[0] and "group" not in samples:
                    samples["group"] = chat
                if i == rows // 3:
                    samples["middle"] = received.isoformat()
        cur.execute("SET maintenance_work_mem = '1GB'")
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ANALYZE media")
        if "messageId" not in samples:
            cur.execute(
                "SELECT message_id, sender FROM media WHERE tenant_id = %s LIMIT 1",
                (tenant_ids[0],),
            )
            found = cur.fetchone()
            assert found is not None
            message_id, sender = found
            samples |= {"messageId": message_id, "sender": sender}
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    master = secrets.token_urlsafe(24)
    import tempfile
    from pathlib import Path

    with services.postgres_server() as admin_url, services.redis_server() as redis_url:
        if admin_url is None:
            sys.exit("no PostgreSQL here (local or embedded)")
        with migrated_database("postgres", Path(tempfile.mkdtemp()), admin_url) as db_url:
            engine = make_engine(db_url)
            keys, ids = [], []
            with session_scope(engine) as session:
                names = ["acme", *(f"tenant-{n:02d}" for n in range(1, args.tenants))]
                for name in names:
                    tenant, key = create_tenant(
                        session,
                        box=SecretBox(master),
                        spec=TenantSpec(
                            name=name,
                            hmac_key="hmac-key-" + name,
                            titan_url="http://t",
                            titan_api_key="x",
                            strategy="download",
                            s3_bucket="bucket",
                        ),
                    )
                    keys.append(key)
                    ids.append(tenant.id or 0)
            engine.dispose()
            started = time.monotonic()
            samples = load(db_url, ids, args.rows)
            print(f"loaded {args.rows:,} rows in {time.monotonic() - started:.0f}s", flush=True)
            engine = make_engine(db_url)
            started = time.monotonic()
            totals.fold(engine)  # what the beat does within seconds of the load
            with session_scope(engine) as session:
                session.execute(text("ANALYZE media_chats"))
            engine.dispose()
            print(f"folded the load's deltas in {time.monotonic() - started:.0f}s", flush=True)
            receiver = services.start_receiver(
                "bench-query-receiver",
                {
                    "ARCHIVER_DATABASE_URL": db_url,
                    "ARCHIVER_SECRET_KEY": master,
                    "ARCHIVER_BROKER_URL": redis_url,
                    "ARCHIVER_LOG_LEVEL": "WARNING",
                    "ARCHIVER_ADMIN_API_KEY": ADMIN_KEY,
                },
                ready="/healthz",
            )
            try:
                run_queries(receiver.url, keys[0], samples, args.repeat)
                run_figures(receiver.url, keys[0], db_url, args.repeat)
            finally:
                receiver.stop()


ADMIN_KEY = "bench-admin-key-" + "a" * 24


def _timed(name: str, call: Callable[[], object], repeat: int, target: float, note: str) -> None:
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        timings.append((time.perf_counter() - t0) * 1000)
    p99 = percentile(timings, 0.99)
    print(
        f"{name:<34}{statistics.median(timings):>9.2f}{p99:>9.2f}{max(timings):>9.2f}"
        f"{note:>6}  {'ok' if p99 < target else 'MISSED'}",
        flush=True,
    )


def run_figures(url: str, key: str, db_url: str, repeat: int) -> None:
    """Stats, the overview, the chats page, a /metrics scrape and status's database work:
    target p99 < 50."""
    from archiver.reporting import figures
    from archiver.scheduling import pauses
    from archiver.tenants import notify
    from archiver.tenants.tenants import list_tenants

    print(f"{'figures':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'':>6}  target p99 < 50")

    def fetch(client: httpx.Client, path: str) -> Callable[[], object]:
        def call() -> object:
            answer = client.get(path)
            answer.raise_for_status()
            return answer

        return call

    tenant = {"Authorization": f"Bearer {key}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with (
        httpx.Client(base_url=url, headers=tenant, timeout=30) as as_tenant,
        httpx.Client(base_url=url, headers=admin, timeout=30) as as_admin,
        httpx.Client(base_url=url, timeout=30) as scraper,
    ):
        _timed("/api/stats (a tenant)", fetch(as_tenant, "/api/stats"), repeat, 50, "")
        _timed("/api/stats (admin, all)", fetch(as_admin, "/api/stats"), repeat, 50, "")
        _timed("/metrics scrape", fetch(scraper, "/metrics"), repeat, 50, "")
    for who, login in (("a tenant", key), ("admin, all", ADMIN_KEY)):
        with httpx.Client(base_url=url, timeout=30) as browser:
            assert browser.post("/ui/login", data={"key": login}).status_code == 303
            _timed(f"dashboard overview ({who})", fetch(browser, "/ui/"), repeat, 50, "")
            if login == ADMIN_KEY:  # a tenant's page is timed with the listings
                _timed("dashboard chats (admin, all)", fetch(browser, "/ui/chats"), repeat, 50, "")
    engine = make_engine(db_url)

    def status_queries() -> object:
        # What `titan-archiver status` asks the database (its broker questions aside).
        with session_scope(engine) as session:
            figures.backlog(session)
            pauses.paused(session)
            pauses.paused_sessions(session)
            notify.counts(session)
            return list_tenants(session)

    _timed("status (database part)", status_queries, repeat, 50, "")
    engine.dispose()


def run_queries(url: str, key: str, samples: dict[str, str], repeat: int) -> None:
    from archiver.media.query import encode_cursor

    # A position a third of the way into the table: every page after it is a "deep" page.
    middle = encode_cursor(datetime.fromisoformat(samples["middle"]), 1)
    week = (START + timedelta(days=90)).isoformat().replace("+00:00", "Z")
    week_end = (START + timedelta(days=97)).isoformat().replace("+00:00", "Z")
    queries: list[tuple[str, dict[str, str]]] = [
        ("newest page", {}),
        ("status=failed", {"status": "failed"}),
        ("session=sales", {"session": "sales"}),
        ("type=video", {"type": "video"}),
        ("mimeType=image/ (prefix)", {"mimeType": "image/"}),
        ("mimeType=application/pdf", {"mimeType": "application/pdf"}),
        ("sender (phone)", {"sender": samples["sender"]}),
        ("messageId", {"messageId": samples["messageId"]}),
        ("chat (a group)", {"chat": samples["group"]}),
        ("chat (a contact)", {"chat": samples["sender"]}),
        ("isGroup=true", {"isGroup": "true"}),
        ("fromMe=true", {"fromMe": "true"}),
        ("chat + type=image", {"chat": samples["group"], "type": "image"}),
        ("since/until one week", {"since": week, "until": week_end}),
        ("minSize/maxSize band", {"minSize": "1000000", "maxSize": "1200000"}),
        ("type+session+status", {"type": "image", "session": "support", "status": "archived"}),
        ("persisted=false", {"persisted": "false"}),
        ("deep page (desc cursor)", {"cursor": middle}),
        ("deep page (asc cursor)", {"cursor": middle, "order": "asc"}),
        ("deep page + type=audio", {"cursor": middle, "type": "audio"}),
        ("deep page + chat (group)", {"cursor": middle, "chat": samples["group"]}),
        ("deep page + fromMe=true", {"cursor": middle, "fromMe": "true"}),
    ]
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
    )
    head = f"{'query (limit=100)':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'rows':>6}"
    print(head + "  target p99 < 30")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for name, params in queries:
            timings = []
            count = 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                answer = client.get("/api/media", params={"limit": "100", **params})
                timings.append((time.perf_counter() - t0) * 1000)
                answer.raise_for_status()
                count = len(answer.json()["data"])
            p99 = percentile(timings, 0.99)
            print(
                f"{name:<34}{statistics.median(timings):>9.2f}{p99:>9.2f}{max(timings):>9.2f}"
                f"{count:>6}  {'ok' if p99 < 30 else 'MISSED'}",
                flush=True,
            )
    # The dashboard's Chats view aggregates the tenant's rows per conversation on each view.
    with httpx.Client(base_url=url, timeout=120) as browser:
        signed_in = browser.post("/ui/login", data={"key": key})
        assert signed_in.status_code == 303, signed_in.text
        timings = []
        for _ in range(max(3, repeat // 20)):
            t0 = time.perf_counter()
            page = browser.get("/ui/chats")
            timings.append((time.perf_counter() - t0) * 1000)
            page.raise_for_status()
        lines = page.text.count("<tr data-chat=")
        print(
            f"{'dashboard /ui/chats':<34}{statistics.median(timings):>9.2f}"
            f"{percentile(timings, 0.99):>9.2f}{max(timings):>9.2f}{lines:>6}  (not paged)",
            flush=True,
        )


if __name__ == "__main__":
    main()
