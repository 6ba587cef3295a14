"""Behind PgBouncer in transaction pooling mode (Debian's pgbouncer, as operators run it):
migrations, the receiver, a Celery worker with beat, the query API and the CLI all work
through it, with the database URL saying ``?pool_mode=transaction``. Before, signed webhooks
answered 503 and GET /api/media 500 (DuplicatePreparedStatement), and the worker's
``options`` startup parameter was refused."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from archiver.infra.db import make_engine
from devstack import processes, services
from devstack.fixtures import add_tenant, process_env, running_archiver
from devstack.rig import RedisDatabases
from tests.test_cli import run
from titan_simulator.sender import post_signed

pytestmark = pytest.mark.postgres


def _repeated_queries_fail(url: str) -> int:
    """How many of 100 clients, each running one statement 10 times, hit an error."""
    engine = make_engine(url)

    def client(n: int) -> bool:
        try:
            with engine.connect() as conn:
                for _ in range(10):
                    conn.execute(text("SELECT CAST(:n AS int) + 1"), {"n": n}).scalar()
                    conn.commit()
        except Exception:  # counted, whatever the driver raised
            return True
        return False

    try:
        with ThreadPoolExecutor(16) as pool:
            return sum(pool.map(client, range(100)))
    finally:
        engine.dispose()


def test_the_whole_path_works_through_pgbouncer_in_transaction_mode(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str, pg_admin_url: str | None
) -> None:
    if pg_admin_url is None:
        pytest.skip("no PostgreSQL server here")
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        pytest.skip("no pgbouncer here (Debian package pgbouncer; scripts/test installs it)")
    with (
        services.fresh_postgres_database(pg_admin_url) as direct,
        services.pgbouncer(pg_admin_url) as bouncer,
    ):
        server = direct.split("@", 1)[1].split("/", 1)[0]
        pooled = direct.replace(server, bouncer, 1) + "?pool_mode=transaction"
        # Without saying so, the worker's engine is refused at connect (its startup options).
        plain = make_engine(direct.replace(server, bouncer, 1), durable_commits=False)
        with pytest.raises(Exception, match="connection"), plain.connect() as conn:
            conn.execute(text("SELECT 1"))
        plain.dispose()
        # ... and the receiver's engine meets psycopg's prepared statements on other servers.
        assert _repeated_queries_fail(direct.replace(server, bouncer, 1)) > 0
        assert _repeated_queries_fail(pooled) == 0

        run(pooled, "db", "upgrade")
        broker = redis_dbs.take()
        env = process_env(pooled, broker)
        with running_archiver("bouncer", env, tmp_path) as (web, sim):
            tenant = add_tenant(pooled, sim=sim, s3_endpoint=s3_endpoint, name="pooled")
            items = [
                sim.make_media(account=tenant.name, message_type=kind, size=size)
                for kind, size in [("image", 30_000)] * 16 + [("video", 12_000_000)] * 2
            ]
            url = f"{web.receiver_url}/webhooks/{tenant.name}"
            with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
                codes = list(
                    pool.map(lambda i: post_signed(client, url, tenant.hmac_key, i.envelope), items)
                )
            assert [c.status_code for c in codes] == [202] * len(items)
            key = json.loads(run(pooled, "api-keys", "create", tenant.name).stdout)["apiKey"]
            headers = {"Authorization": f"Bearer {key}"}

            def archived() -> int:
                found = httpx.get(
                    f"{web.receiver_url}/api/media",
                    params={"status": "archived", "limit": "100"},
                    headers=headers,
                    timeout=10,
                )
                assert found.status_code == 200, found.text
                return len(found.json()["data"])

            processes.wait_until(
                lambda: archived() == len(items), timeout=120, interval=0.5, what="all archived"
            )
            # Many concurrent reads, each statement repeated well past psycopg's prepare
            # threshold, spread over PgBouncer's server connections.
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(
                        lambda _: (
                            httpx.get(
                                f"{web.receiver_url}/api/media",
                                params={"limit": "5"},
                                headers=headers,
                                timeout=10,
                            ).status_code
                        ),
                        range(120),
                    )
                )
            assert answers == [200] * 120
            listed = run(pooled, "media", "list", "--tenant", tenant.name, "--format", "jsonl")
            rows = [json.loads(line) for line in listed.stdout.splitlines()]
            assert {r["id"] for r in rows} == {i.media_id for i in items}
            assert {r["sha256"] for r in rows} == {i.sha256 for i in items}
            status = json.loads(run(pooled, "status", "--json", env=env).stdout)
            assert status["rows"]["archived"] == len(items)
