"""An archive people can use (issue 14), end to end with real processes (simulator, receiver,
a Celery worker running beat, moto over HTTP) on SQLite and PostgreSQL: conversations and
their filter, what a tenant captures, revocations, retention with a legal hold, erasure
checked against the S3 endpoint, signed notifications to a real HTTP server that was down
for a while, and the audit trail of all of it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media, Notification, utcnow
from devstack import processes, services
from devstack.fixtures import TenantSetup, process_env, scrape, total
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia

ADMIN = "archive-use-admin-" + "b" * 16
GROUP = "120363999@g.us"


@dataclass
class Stack(Rig):
    def tenant(self, name: str | None = None, *, strategy: str = "download") -> TenantSetup:
        """A tenant named ``name`` plus a random suffix: the module's tests share one stack."""
        return super().tenant(f"{name or 't'}-{secrets.token_hex(3)}", strategy=strategy)

    def archived(self, tenant: TenantSetup, *items: SentMedia, status: str = "archived") -> None:
        self.wait_status(items, status, tenant=tenant)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return self.client.request(method, f"{self.receiver_url}{path}", headers=headers, **kwargs)

    def keys(self, tenant: TenantSetup) -> dict[str, list[str]]:
        """Every object version (and delete marker) in the tenant's bucket, by key."""
        s3 = services.s3_client(self.s3_endpoint)
        found: dict[str, list[str]] = {}
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=tenant.bucket):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                found.setdefault(entry["Key"], []).append(entry["VersionId"])
        return found


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: RedisDatabases,
    s3_endpoint: str,
    pg_admin_url: str | None,
) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp(f"use-{request.param}")
    broker = redis_dbs.take()
    with migrated_database(request.param, tmp, pg_admin_url) as database_url:
        env = process_env(
            database_url,
            broker,
            ARCHIVER_ADMIN_API_KEY=ADMIN,
            ARCHIVER_RETENTION_INTERVAL_SECONDS="1",
            ARCHIVER_NOTIFY_RETRY_BASE_SECONDS="0.3",
        )
        name = f"use-{request.param}"
        with running_rig(
            name, database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp
        ) as rig:
            yield Stack(**vars(rig))


def _group(**extra: Any) -> dict[str, Any]:
    return {
        "from": {"id": GROUP},
        "sender": {"phoneNumber": "+5511222222222", "lid": "55@lid", "mode": "pn"},
        "isGroup": True,
        "pushName": "Ana",
        **extra,
    }


def test_group_and_one_to_one_media_keep_their_conversation(stack: Stack) -> None:
    t = stack.tenant("conv")
    image = stack.media(t, "image", payload=_group())
    video = stack.media(
        t,
        "video",
        payload={
            "from": {"phoneNumber": "+5511444444444", "lid": "66@lid", "mode": "pn"},
            "pushName": "Bruno",
        },
    )
    stack.send(t, image, video)
    stack.archived(t, image, video)
    api_key = json.loads(stack.cli("api-keys", "create", t.name).stdout)["apiKey"]

    def listed(**params: str) -> list[dict[str, Any]]:
        answer = stack.client.get(
            f"{stack.receiver_url}/api/media",
            params=params,
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"])

    (group_doc,) = listed(chat=GROUP)
    assert group_doc["id"] == image.media_id
    assert (group_doc["chat"], group_doc["isGroup"], group_doc["senderName"]) == (
        GROUP,
        True,
        "Ana",
    )
    assert group_doc["sender"] == "+5511222222222" and group_doc["fromMe"] is False
    (video_doc,) = listed(chat="+5511444444444")
    assert video_doc["id"] == video.media_id
    assert (video_doc["isGroup"], video_doc["senderName"], video_doc["type"]) == (
        False,
        "Bruno",
        "video",
    )
    assert [d["id"] for d in listed(isGroup="true")] == [image.media_id]
    out = stack.cli("media", "list", "--tenant", t.name, "--chat", GROUP, "--format", "jsonl")
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == [image.media_id]


def test_what_a_tenant_captures(stack: Stack) -> None:
    t = stack.tenant("capture")
    sent = stack.media(t, "image", event="message.sent", payload={"to": "+5511555555555"})
    story = stack.media(t, "video", payload={"from": {"id": "status@broadcast"}})
    # By default: outgoing media is not captured (200 ignored, counted), statuses are.
    answer = stack.post(t, sent.envelope)
    assert (answer.status_code, answer.json()) == (200, {"status": "ignored", "reason": "outgoing"})
    stack.send(t, story)
    stack.archived(t, story)
    stack.cli(
        "tenants",
        "update",
        t.name,
        "--capture-outgoing",
        "--no-capture-status",
        "--capture-types",
        "image,video",
        "--capture-max-size",
        "1MB",
    )
    shown = json.loads(stack.cli("tenants", "show", t.name).stdout)
    assert (shown["captureOutgoing"], shown["captureStatus"], shown["captureTypes"]) == (
        True,
        False,
        ["image", "video"],
    )
    assert shown["captureMaxBytes"] == 2**20
    # Receivers read the new policy within their tenant cache's 5 s.
    processes.wait_until(
        lambda: stack.post(t, sent.envelope).status_code == 202,
        timeout=20,
        interval=0.5,
        what="outgoing media captured",
    )
    stack.archived(t, sent)
    row = stack.rows(t)[sent.media_id]
    assert (row.from_me, row.chat) == (True, "+5511555555555")
    story2 = stack.media(t, "image", payload={"from": {"id": "status@broadcast"}})
    audio = stack.media(t, "audio")
    big = stack.media(t, "video", size=2 * 2**20)
    reasons = [stack.post(t, i.envelope).json().get("reason") for i in (story2, audio, big)]
    assert reasons == ["status", "type", "size"]
    assert set(stack.rows(t)) == {sent.media_id, story.media_id}  # nothing else recorded
    metrics = scrape(f"{stack.receiver_url}/metrics")
    counted = {
        reason: total(metrics, "archiver_media_not_captured_total", tenant=t.name, reason=reason)
        for reason in ("outgoing", "status", "type", "size")
    }
    assert counted["outgoing"] >= 1 and counted["status"] == counted["type"] == 1
    assert counted["size"] == 1


def test_a_revocation_is_recorded_and_erases_for_a_tenant_that_says_so(stack: Stack) -> None:
    keep, erase = stack.tenant("revoke-keep"), stack.tenant("revoke-erase")
    stack.cli("tenants", "update", erase.name, "--delete-revoked")
    kept, erased = stack.media(keep, "image"), stack.media(erase, "image")
    stack.send(keep, kept)
    stack.send(erase, erased)
    stack.archived(keep, kept)
    stack.archived(erase, erased)
    for tenant, item in ((keep, kept), (erase, erased)):
        revoke = {
            "id": "evt_" + secrets.token_hex(4),
            "event": "message.revoked",
            "session": item.session,
            "payload": {"revokedMessageId": item.message_id},
        }
        answer = stack.post(tenant, revoke)
        assert answer.json() == {"status": "revoked", "messageId": item.message_id, "media": 1}
    row = stack.rows(keep)[kept.media_id]
    assert row.revoked_at is not None and row.revoked_by == "message.revoked"
    processes.wait_until(
        lambda: not stack.rows(erase) and not stack.keys(erase),
        timeout=30,
        interval=0.5,
        what="the revoked media erased by the retention pass",
    )
    assert list(stack.keys(keep)) == [row.object_key]  # the other tenant's object stays


def test_retention_deletes_exactly_the_expired_rows_and_objects(stack: Stack) -> None:
    t, other = stack.tenant("retain"), stack.tenant("retain-other")
    old, held, fresh = (stack.media(t, "image") for _ in range(3))
    theirs = stack.media(other, "image")
    stack.send(t, old, held, fresh)
    stack.send(other, theirs)
    stack.archived(t, old, held, fresh)
    stack.archived(other, theirs)
    stack.cli("media", "hold", "--tenant", t.name, "--id", held.media_id)
    # Backdate two of the rows (and the other tenant's) 40 days, then set a 30-day retention.
    engine = make_engine(stack.database_url)
    try:
        with session_scope(engine) as session:
            pks = [stack.rows(t)[i.media_id].pk for i in (old, held)]
            pks.append(stack.rows(other)[theirs.media_id].pk)
            session.execute(
                update(Media)
                .where(col(Media.pk).in_(pks))
                .values(received_at=utcnow() - timedelta(days=40))
            )
    finally:
        engine.dispose()
    before = {i.media_id: stack.rows(t)[i.media_id].object_key for i in (old, held, fresh)}
    stack.cli("tenants", "update", t.name, "--retention-days", "30")
    processes.wait_until(
        lambda: old.media_id not in stack.rows(t),
        timeout=30,
        interval=0.5,
        what="the expired row deleted",
    )
    assert set(stack.rows(t)) == {held.media_id, fresh.media_id}
    assert set(stack.keys(t)) == {before[held.media_id], before[fresh.media_id]}
    assert set(stack.rows(other)) == {theirs.media_id} and len(stack.keys(other)) == 1
    records = [
        json.loads(line)
        for line in stack.cli(
            "audit", "list", "--tenant", t.name, "--format", "jsonl"
        ).stdout.splitlines()
    ]
    deleted = [r for r in records if r["action"] == "retention.delete"]
    assert deleted and deleted[0]["actor"] == "retention"
    assert deleted[0]["detail"]["rows"] == 1 and deleted[0]["detail"]["held"] == 1


def test_erase_by_sender_leaves_nothing_of_them_and_touches_no_other_tenant(
    stack: Stack,
) -> None:
    a, b = stack.tenant("erase-a"), stack.tenant("erase-b")
    s3 = services.s3_client(stack.s3_endpoint)
    s3.put_bucket_versioning(Bucket=a.bucket, VersioningConfiguration={"Status": "Enabled"})
    target, other = "+5511666666666", "+5511777777777"
    mine = [stack.media(a, kind) for kind in ("image", "document")]
    someone = stack.media(a, "image")
    theirs = stack.media(b, "image")
    for item in (*mine, theirs):
        item.envelope["payload"]["from"]["phoneNumber"] = target
    someone.envelope["payload"]["from"]["phoneNumber"] = other
    stack.send(a, *mine, someone)
    stack.send(b, theirs)
    stack.archived(a, *mine, someone)
    stack.archived(b, theirs)
    # A second version of one object: erasure removes every version.
    first_key = stack.rows(a)[mine[0].media_id].object_key
    assert first_key is not None
    s3.put_object(Bucket=a.bucket, Key=first_key, Body=b"an older copy")
    assert len(stack.keys(a)[first_key]) == 2
    unconfirmed = stack.cli("media", "erase", "--tenant", a.name, "--sender", target, codes=(1, 2))
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert len(stack.rows(a)) == 3  # nothing was done
    dry = json.loads(
        stack.cli("media", "erase", "--tenant", a.name, "--sender", target, "--dry-run").stdout
    )
    assert dry == {"tenant": a.name, "dryRun": True, "rows": 2}
    out = stack.cli("media", "erase", "--tenant", a.name, "--sender", target, "--yes")
    said = json.loads(out.stdout)
    assert (said["rows"], said["objects"], said["held"], said["inFlight"]) == (2, 3, 0, 0)
    assert sorted(said["mediaIds"]) == sorted(i.media_id for i in mine)
    assert set(stack.rows(a)) == {someone.media_id}
    assert set(stack.keys(a)) == {stack.rows(a)[someone.media_id].object_key}
    assert set(stack.rows(b)) == {theirs.media_id} and len(stack.keys(b)) == 1
    # The admin API erases by chat, and says what it removed; a tenant key may not.
    answer = stack.admin("POST", "/api/admin/erase", json={"tenant": a.name, "chat": other})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] | {"mediaIds": None} == {
        "tenant": a.name,
        "rows": 1,
        "objects": 1,
        "bytes": someone.size,
        "held": 0,
        "inFlight": 0,
        "errors": [],
        "locked": [],
        "mediaIds": None,
    }
    assert not stack.rows(a) and not stack.keys(a)
    assert stack.admin("POST", "/api/admin/erase", json={"tenant": a.name}).status_code == 400
    api_key = json.loads(stack.cli("api-keys", "create", b.name).stdout)["apiKey"]
    refused = stack.client.post(
        f"{stack.receiver_url}/api/admin/erase",
        json={"tenant": b.name, "sender": target},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert refused.status_code == 403 and set(stack.rows(b)) == {theirs.media_id}
    actions = [
        (r["actor"], r["action"], r["detail"].get("rows"))
        for r in stack.admin("GET", "/api/admin/audit", params={"tenant": a.name}).json()["data"]
        if r["action"] == "media.erase"
    ]
    assert actions[0] == ("admin", "media.erase", 1)
    assert actions[1][0].startswith("cli:") and actions[1][1:] == ("media.erase", 2)


@dataclass
class Endpoint:
    """The tenant's own system: a real HTTP server that verifies each event's signature."""

    secret: str
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    server: ThreadingHTTPServer | None = None

    def verify(self, headers: Any, body: bytes) -> bool:
        msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
        key = base64.b64decode(self.secret.split("_", 1)[1])
        mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        fresh = abs(int(stamp) - int(utcnow().timestamp())) < 300
        return fresh and any(
            hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split()
        )

    def start(self, port: int) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if not endpoint.verify(self.headers, body):
                    endpoint.refused += 1
                    self.send_response(401)
                else:
                    endpoint.received.append({"id": self.headers["webhook-id"], **json.loads(body)})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def test_signed_notifications_reach_an_endpoint_that_was_down(stack: Stack) -> None:
    t = stack.tenant("notify")
    port = processes.free_port()
    shown = json.loads(
        stack.cli(
            "tenants", "update", t.name, "--notify-url", f"http://127.0.0.1:{port}/hooks"
        ).stdout
    )
    secret = shown["notifySecret"]
    assert secret.startswith("whsec_") and shown["notifyUrl"].endswith("/hooks")
    assert "whsec_" not in stack.cli("tenants", "show", t.name).stdout  # shown only once
    endpoint = Endpoint(secret)
    items = [stack.media(t, "image") for _ in range(3)]
    lost = stack.media(t, "document", gone=True)
    # Titan's auto-persist already stored this one: archived on arrival, notified as well.
    persisted = stack.media(t, "image", payload={"mediaUrl": f"s3://{t.bucket}/auto/1.jpg"})
    stack.send(t, *items, lost, persisted)
    assert stack.post(t, persisted.envelope).json()["status"] == "duplicate"  # no second event
    stack.archived(t, *items, persisted)
    stack.archived(t, lost, status="failed")

    def attempts() -> list[int]:
        engine = make_engine(stack.database_url)
        try:
            with session_scope(engine) as session:
                return [n.attempts for n in session.exec(select(Notification))]
        finally:
            engine.dispose()

    # The endpoint is down: every event is retried, archiving was not held up.
    processes.wait_until(
        lambda: len(attempts()) >= 5 and min(attempts()) >= 2,
        timeout=30,
        interval=0.25,
        what="notifications retried while the endpoint is down",
    )
    status = json.loads(stack.cli("status", "--tenant", t.name, "--json").stdout)
    assert status["notifications"]["byTenant"][t.name]["pending"] >= 5
    endpoint.start(port)
    try:
        processes.wait_until(
            lambda: len(endpoint.received) >= 5,
            timeout=30,
            interval=0.25,
            what="every notification delivered",
        )
        processes.wait_until(
            lambda: (
                json.loads(stack.cli("status", "--tenant", t.name, "--json").stdout)[
                    "notifications"
                ]["pending"]
                == 0
            ),
            timeout=15,
            interval=0.5,
            what="the outbox drained",
        )
    finally:
        endpoint.stop()
    assert endpoint.refused == 0
    by_media = {e["data"]["id"]: e for e in endpoint.received}
    assert len(by_media) == len(endpoint.received) == 5  # one per media, none twice
    assert by_media[persisted.media_id]["data"]["strategy"] == "auto"
    for item in items:
        event = by_media[item.media_id]
        assert event["type"] == "media.archived"
        assert event["data"]["status"] == "archived" and event["data"]["sha256"] == item.sha256
        assert event["data"]["tenant"] == t.name and event["data"]["key"]
    failed = by_media[lost.media_id]
    assert failed["type"] == "media.failed" and failed["data"]["status"] == "failed"
    assert len({e["id"] for e in endpoint.received}) == 5


def test_the_audit_trail_names_who_did_what(stack: Stack) -> None:
    t = stack.tenant("audited")
    stack.cli("tenants", "update", t.name, "--retention-days", "90")
    stack.cli("tenants", "pause", t.name, "--reason", "maintenance window")
    stack.cli("tenants", "resume", t.name)
    key = json.loads(stack.cli("api-keys", "create", t.name, "--label", "etl").stdout)
    stack.cli("api-keys", "revoke", key["prefix"])
    with httpx.Client(base_url=stack.receiver_url) as browser:
        assert browser.post("/ui/login", data={"key": ADMIN}).status_code == 303
    lines = stack.cli("audit", "list", "--tenant", t.name, "--format", "jsonl").stdout
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["action"] for r in records] == [
        "key.revoke",
        "key.create",
        "tenant.resume",
        "tenant.pause",
        "tenant.update",
    ]
    assert all(r["actor"].startswith("cli:") and r["tenant"] == t.name for r in records)
    assert records[-1]["detail"] == {"changed": ["retention-days"]}
    assert records[3]["detail"] == {"reason": "maintenance window"}
    assert records[1]["detail"]["label"] == "etl"
    table = stack.cli("audit", "list", "--limit", "5").stdout
    assert "dashboard.sign-in" in table and "admin" in table
    refused = stack.cli("audit", "list", "--limit", "0", codes=(1, 2))
    assert refused.returncode == 2


def test_the_web_process_reports_its_requests_process_and_build(stack: Stack) -> None:
    assert stack.admin("GET", "/api/admin/audit").status_code == 200
    assert stack.client.get(f"{stack.receiver_url}/api/media").status_code == 401
    with httpx.Client(base_url=stack.receiver_url) as browser:
        assert browser.post("/ui/login", data={"key": ADMIN}).status_code == 303
        assert browser.get("/ui/chats").status_code == 200
    metrics = scrape(f"{stack.receiver_url}/metrics")

    def requests(**labels: str) -> float:
        return total(metrics, "archiver_http_requests_total", **labels)

    assert requests(handler="audit_list", method="GET", status="200") >= 1
    assert requests(handler="list_media", status="401") >= 1
    assert requests(handler="login", method="POST", status="303") >= 1
    assert requests(handler="chats", status="200") >= 1
    # Webhooks are not in it (they have archiver_webhooks_total), and labels stay bounded.
    assert requests(handler="receive_webhook") == 0
    assert total(metrics, "archiver_http_request_seconds_count", handler="chats") >= 1
    assert total(metrics, "archiver_build_info", component="receiver") == 1
    assert total(metrics, "process_resident_memory_bytes") > 0
