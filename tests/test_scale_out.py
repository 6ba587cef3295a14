"""Scale-out on one machine: 2 receiver processes behind a round-robin balancer, 3 Celery
workers, PostgreSQL, and a shared broker (Redis, then RabbitMQ). 1,000 signed media events
from the simulator are archived exactly once, and the metrics scraped from every process
add up to the same totals as the database and the bucket."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select

from archiver.infra.broker import make_celery, queue_depths
from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack import processes, services
from devstack.fixtures import add_tenant, process_env, scrape, settings_for, total
from devstack.processes import Process
from devstack.rig import RedisDatabases
from devstack.tcp_proxy import TcpProxy
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia, Simulator, post_signed

EVENTS = 1000
TOKEN = "scrape-token-" + "x" * 16


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_dbs: RedisDatabases) -> Iterator[str]:
    if request.param == "redis":
        yield redis_dbs.take()
        return
    yield request.getfixturevalue("rabbitmq_url")  # skipped where none listens


def test_two_receivers_and_three_workers_archive_1000_events_once(
    tmp_path: Path, s3_endpoint: str, pg_admin_url: str | None, broker_url: str
) -> None:
    if pg_admin_url is None:
        pytest.skip("scale-out runs on PostgreSQL; none is available")
    services.purge_queues(broker_url)
    with migrated_database("postgres", tmp_path, pg_admin_url) as database_url:
        env = process_env(database_url, broker_url, ARCHIVER_METRICS_TOKEN=TOKEN)
        worker_ports = [processes.free_port() for _ in range(3)]
        procs: list[Process] = []
        balancer: TcpProxy | None = None
        try:
            simulator = services.start_simulator("scale-sim")
            procs.append(simulator.process)
            web = [services.start_receiver(f"scale-receiver-{i}", env) for i in range(2)]
            procs += [r.process for r in web]
            receiver_ports = [int(r.url.rsplit(":", 1)[1]) for r in web]
            for i, port in enumerate(worker_ports):
                procs.append(
                    processes.start_process(
                        f"scale-worker-{i}",
                        [*processes.worker_argv(concurrency=2), "-n", f"scale{i}@%h"],
                        {**env, "ARCHIVER_WORKER_METRICS_PORT": str(port)},
                    )
                )
            sim_url = simulator.url
            for port in worker_ports:
                processes.wait_until(
                    functools.partial(processes.port_open, "127.0.0.1", port),
                    timeout=60,
                    what="worker",
                )
            balancer = TcpProxy(receiver_ports)
            sim = Simulator(sim_url)
            tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="scale")

            rng = random.Random(7)
            items: list[SentMedia] = [
                sim.make_media(
                    account="scale",
                    message_type=rng.choice(["image", "audio", "document", "sticker"]),
                    size=rng.randint(1_000, 30_000),
                )
                for _ in range(EVENTS - 4)
            ]
            # A few over ARCHIVER_LARGE_MEDIA_BYTES, so both queues carry traffic.
            items += [
                sim.make_media(account="scale", message_type="video", size=10_600_000)
                for _ in range(4)
            ]
            rng.shuffle(items)

            url = f"http://127.0.0.1:{balancer.port}/webhooks/scale"

            def deliver(chunk: list[SentMedia]) -> list[int]:
                # A fresh connection per request, so the balancer spreads them.
                statuses = []
                for item in chunk:
                    with httpx.Client(timeout=30) as client:
                        statuses.append(
                            post_signed(client, url, tenant.hmac_key, item.envelope).status_code
                        )
                return statuses

            with ThreadPoolExecutor(8) as pool:
                statuses = [
                    s for part in pool.map(deliver, [items[i::8] for i in range(8)]) for s in part
                ]
            assert statuses == [202] * EVENTS

            engine = make_engine(database_url)

            def archived() -> int:
                with session_scope(engine) as session:
                    query = (
                        select(func.count()).select_from(Media).where(Media.status == "archived")
                    )
                    return int(session.exec(query).one())

            processes.wait_until(lambda: archived() == EVENTS, timeout=300, what="all archived")
            with session_scope(engine) as session:
                rows = list(session.exec(select(Media)))
            engine.dispose()
            # Once each: one row per media id, one object per row, the right bytes.
            assert len(rows) == EVENTS
            assert {r.media_id: r.sha256 for r in rows} == {i.media_id: i.sha256 for i in items}
            s3 = services.s3_client(s3_endpoint)
            keys = [
                obj["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=tenant.bucket)
                for obj in page.get("Contents", [])
            ]
            assert sorted(keys) == sorted(r.object_key or "" for r in rows)
            stored_bytes = sum(r.size or 0 for r in rows)

            # Metrics: every process scraped; per-process counters add up to the totals.
            receivers = [scrape(f"http://127.0.0.1:{p}/metrics", TOKEN) for p in receiver_ports]
            workers = [scrape(f"http://127.0.0.1:{p}/metrics", TOKEN) for p in worker_ports]
            accepted = [total(r, "archiver_webhooks_total", outcome="queued") for r in receivers]
            assert sum(accepted) == EVENTS and min(accepted) > 0, accepted
            done = [total(w, "archiver_tasks_total", outcome="archived") for w in workers]
            assert sum(done) == EVENTS and min(done) > 0, done
            assert sum(total(w, "archiver_archived_bytes_total") for w in workers) == stored_bytes
            assert sum(total(w, "archiver_transfer_seconds_count") for w in workers) == EVENTS
            large = sum(
                total(w, "archiver_tasks_total", outcome="archived", queue="archive-large")
                for w in workers
            )
            assert large == 4
            # The shared gauges agree everywhere.
            for page in [*receivers, *workers]:
                assert total(page, "archiver_media_rows", status="archived") == EVENTS
                assert total(page, "archiver_queue_depth") == 0
            celery = make_celery(settings_for(database_url, broker_url))
            assert queue_depths(celery) == {"archive": 0, "archive-large": 0}
            celery.close()
            # The token is required.
            refused = httpx.get(f"http://127.0.0.1:{worker_ports[0]}/metrics", timeout=10)
            assert refused.status_code == 401
            refused = httpx.get(f"http://127.0.0.1:{receiver_ports[0]}/metrics", timeout=10)
            assert refused.status_code == 401
            sim.close()
        finally:
            if balancer is not None:
                balancer.close()
            for proc in reversed(procs):
                proc.stop()
