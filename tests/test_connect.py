"""`tenants connect` registers the archiver's webhook with Titan (the simulator's webhooks
API), `tenants check` verifies it, and a media sent through that webhook is archived: real
receiver, worker and simulator processes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from devstack.fixtures import process_env
from devstack.rig import RedisDatabases, running_rig
from tests.test_cli import run


def _checks(result: str) -> dict[str, dict[str, object]]:
    return {doc["check"]: doc for doc in map(json.loads, result.splitlines())}


def test_connect_registers_the_webhook_and_media_arrives_through_it(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'archive.db'}"
    run(database_url, "db", "upgrade")
    env = process_env(database_url, redis_dbs.take())
    with running_rig(
        "connect", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp_path
    ) as rig:
        sim, receiver_url = rig.sim, rig.receiver_url
        tenant = rig.tenant("connect")
        titan = httpx.Client(
            base_url=sim.base_url,
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
            *("tenants", "connect", "connect", "--public-url", receiver_url),
            env=env,
        )
        webhook = json.loads(connected.stdout)["webhook"]
        registered = titan.get("/api/webhooks").json()["data"]
        assert [w["id"] for w in registered] == [webhook["id"]]
        assert registered[0]["url"] == f"{receiver_url}/webhooks/connect"
        assert registered[0]["enabled"] is True
        assert "message.received" in registered[0]["events"]
        assert "message.sent" not in registered[0]["events"]  # outgoing is not captured
        assert "hmacKey" not in registered[0]  # Titan never shows the key again

        # The key Titan had before (from `tenants add`) still verifies for a day: deliveries
        # in flight during the switch are not lost.
        late = sim.make_media(account="connect", message_type="image", size=1_000)
        rig.send(tenant, late)

        # Connecting again repairs the same webhook; it never registers a second one.
        again = run(
            database_url,
            *("tenants", "connect", "connect", "--public-url", receiver_url),
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
        rows = rig.wait_status([item, late], "archived")
        assert rows[item.media_id].sha256 == item.sha256

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
