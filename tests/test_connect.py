"""`tenants connect` registers the archiver's webhook with Titan (the simulator's webhooks
API), `tenants check` verifies it, and a media sent through that webhook is archived: real
receiver, worker and simulator processes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack import processes
from devstack.fixtures import add_tenant, process_env, running_archiver
from tests.test_cli import run
from titan_simulator.sender import post_signed


def _rows(database_url: str) -> list[Media]:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return list(session.exec(select(Media)))
    finally:
        engine.dispose()


def _checks(result: str) -> dict[str, dict[str, object]]:
    return {doc["check"]: doc for doc in map(json.loads, result.splitlines())}


@pytest.mark.parametrize("kind", ["sqlite"])
def test_connect_registers_the_webhook_and_media_arrives_through_it(
    kind: str, tmp_path: Path, redis_url: str, s3_endpoint: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'archive.db'}"
    run(database_url, "db", "upgrade")
    env = process_env(database_url, redis_url.rsplit("/", 1)[0] + "/11")
    with running_archiver("connect", env, tmp_path) as (web, sim):
        tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="connect")
        titan = httpx.Client(
            base_url=web.sim_url,
            headers={"Authorization": f"Bearer {tenant.titan_api_key}"},
            timeout=30,
        )

        # Not connected yet: check says nothing of a webhook (it was set up by hand).
        before = _checks(run(database_url, "tenants", "check", "connect", env=env).stdout)
        assert "webhook" not in before

        refused = run(
            database_url,
            *("tenants", "connect", "connect", "--public-url", "http://archiver.example.com"),
            check=False,
            env=env,
        )
        assert refused.returncode == 2 and "--public-url" in refused.stderr
        assert titan.get("/api/webhooks").json()["data"] == []

        connected = run(
            database_url,
            *("tenants", "connect", "connect", "--public-url", web.receiver_url),
            env=env,
        )
        webhook = json.loads(connected.stdout)["webhook"]
        registered = titan.get("/api/webhooks").json()["data"]
        assert [w["id"] for w in registered] == [webhook["id"]]
        assert registered[0]["url"] == f"{web.receiver_url}/webhooks/connect"
        assert registered[0]["enabled"] is True
        assert "message.received" in registered[0]["events"]
        assert "message.sent" not in registered[0]["events"]  # outgoing is not captured
        assert "hmacKey" not in registered[0]  # Titan never shows the key again

        # The key Titan had before (from `tenants add`) still verifies for a day: deliveries
        # in flight during the switch are not lost.
        late = sim.make_media(account="connect", message_type="image", size=1_000)
        with httpx.Client(timeout=30) as client:
            url = f"{web.receiver_url}/webhooks/connect"
            assert post_signed(client, url, tenant.hmac_key, late.envelope).status_code == 202

        # Connecting again repairs the same webhook; it never registers a second one.
        again = run(
            database_url,
            *("tenants", "connect", "connect", "--public-url", web.receiver_url),
            env=env,
        )
        assert json.loads(again.stdout)["webhook"]["id"] == webhook["id"]
        assert len(titan.get("/api/webhooks").json()["data"]) == 1

        checked = _checks(run(database_url, "tenants", "check", "connect", env=env).stdout)
        assert checked["webhook"]["ok"] is True

        # A media delivered by Titan through the registered webhook, signed with the key
        # connect generated (the test never learns it), is archived.
        item = sim.make_media(account="connect", message_type="image", size=40_000)
        answers = sim.deliver(account="connect", envelope=item.envelope)
        assert [a["status"] for a in answers] == [202]
        processes.wait_until(
            lambda: [r.status for r in _rows(database_url)] == ["archived", "archived"],
            timeout=60,
            what="the media archived",
        )
        assert item.sha256 in {r.sha256 for r in _rows(database_url)}

        # Disabled at Titan: check says so and fails.
        titan.patch(f"/api/webhooks/{webhook['id']}", json={"enabled": False})
        failed = run(database_url, "tenants", "check", "connect", check=False, env=env)
        assert failed.returncode == 1
        assert "disabled" in str(_checks(failed.stdout)["webhook"]["detail"])

        titan.delete(f"/api/webhooks/{webhook['id']}")
        gone = run(database_url, "tenants", "check", "connect", check=False, env=env)
        assert gone.returncode == 1
        assert "no webhook at Titan" in str(_checks(gone.stdout)["webhook"]["detail"])
        titan.close()
        trail = run(database_url, "audit", "list", "--format", "jsonl", env=env).stdout
        assert any(json.loads(line)["action"] == "tenant.connect" for line in trail.splitlines())
