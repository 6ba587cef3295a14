"""RabbitMQ as the broker (ARCHIVER_BROKER_URL=amqp://...): the same path, end to end."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from archiver.infra.broker import make_celery, queue_depth
from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack import processes, services
from devstack.fixtures import add_tenant, process_env, settings_for, start_web
from tests.conftest import migrated_database
from titan_simulator.sender import Simulator, post_signed


def test_media_is_archived_through_rabbitmq(
    tmp_path: Path, s3_endpoint: str, pg_admin_url: str | None, rabbitmq_url: str
) -> None:
    from sqlmodel import select

    services.purge_queues(rabbitmq_url)
    celery = make_celery(settings_for("sqlite://", rabbitmq_url))
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        env = process_env(database_url, rabbitmq_url)
        web = start_web("rabbit", env)
        procs = list(web.procs)
        sim_url, receiver_url = web.sim_url, web.receiver_url
        try:
            sim = Simulator(sim_url)
            tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="acme")
            engine = make_engine(database_url)
            items = [
                sim.make_media(account="acme", message_type=t, size=s)
                for t, s in (("image", 50_000), ("video", 9_000_000), ("document", 3_000))
            ]
            with httpx.Client(timeout=30) as client:
                for item in items:
                    answer = post_signed(
                        client, f"{receiver_url}/webhooks/acme", tenant.hmac_key, item.envelope
                    )
                    assert answer.status_code == 202
            # Waiting in RabbitMQ, no worker yet (its count of a queue can trail a publish).
            processes.wait_until(
                lambda: queue_depth(celery) == len(items), timeout=30, what="all three queued"
            )
            procs.append(
                processes.start_process("rabbit-worker", processes.worker_argv(concurrency=2), env)
            )

            def rows() -> dict[str, Media]:
                with session_scope(engine) as session:
                    return {r.media_id: r for r in session.exec(select(Media))}

            processes.wait_until(
                lambda: all(r.status == "archived" for r in rows().values()),
                timeout=120,
                what="archived through RabbitMQ",
            )
            assert {m: r.sha256 for m, r in rows().items()} == {i.media_id: i.sha256 for i in items}
            processes.wait_until(lambda: queue_depth(celery) == 0, timeout=30, what="queue empty")
            sim.close()
            engine.dispose()
        finally:
            for proc in reversed(procs):
                proc.stop()
            celery.close()


def test_two_procfile_workers_on_one_host_both_run(tmp_path: Path, rabbitmq_url: str) -> None:
    """The Procfile's worker line, started twice on one host (foreman/honcho scale=2): each
    takes a node name of its own, so RabbitMQ lets both hold their pidbox queue."""
    import shutil
    import sys
    import time

    from tests.test_deploy_files import procfile

    line = procfile()["worker"]
    assert "-n " in line
    bin_dir = str(Path(sys.executable).parent)
    env = process_env(f"sqlite:///{tmp_path / 'w.db'}", rabbitmq_url)
    env |= {"WORKER_CONCURRENCY": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    shell = shutil.which("sh") or "/bin/sh"
    workers = [
        processes.start_process(f"procfile-worker-{n}", [shell, "-c", line], env) for n in (1, 2)
    ]
    try:
        celery = make_celery(settings_for("sqlite://", rabbitmq_url))
        try:
            processes.wait_until(
                lambda: len(celery.control.ping(timeout=1.0) or []) >= 2,
                timeout=90,
                what="both workers answering",
            )
            names = sorted(next(iter(r)) for r in celery.control.ping(timeout=1.0) or [])
        finally:
            celery.close()
        time.sleep(2)
        assert [w.alive() for w in workers] == [True, True], [w.log() for w in workers]
        assert len(set(names)) == 2 and all(n.startswith("worker-") for n in names), names
        assert "RESOURCE_LOCKED" not in "".join(w.log() for w in workers)
    finally:
        for worker in workers:
            worker.stop()
