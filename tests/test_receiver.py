"""The receiver over real HTTP (uvicorn in a thread), real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from sqlalchemy import func
from sqlmodel import col, select
from starlette.types import ASGIApp

from archiver.infra.db import make_engine, session_scope
from archiver.queue import ARCHIVE_QUEUE
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Media
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack.fixtures import MASTER_KEY, settings_for
from devstack.processes import free_port
from receiver.app import create_app
from titan_simulator.sender import media_envelope, signature

HMAC_KEY = "tenant-hmac-key-acme"


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the receiver app under uvicorn in a thread; yield its base URL."""
    with serve_app(create_app(settings)) as url:
        yield url


@contextmanager
def serve_app(
    app: ASGIApp, *, http: type[asyncio.Protocol] | None = None, access_log: bool = True
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread, its lifespan on; yield its base URL.
    ``http``: the HTTP protocol (uvicorn's own by default); ``access_log``: uvicorn's."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            http=http or "auto",
            access_log=access_log,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def add_tenant(database_url: str, name: str = "acme", hmac_key: str = HMAC_KEY) -> str:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            _, api_key = create_tenant(
                session,
                box=SecretBox(MASTER_KEY),
                spec=TenantSpec(
                    name=name,
                    hmac_key=hmac_key,
                    titan_url="http://titan.invalid",
                    titan_api_key="titan_x",
                    strategy="download",
                    s3_bucket="b",
                ),
            )
    finally:
        engine.dispose()
    return api_key


def count_rows(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return int(session.exec(select(func.count()).select_from(Media)).one())
    finally:
        engine.dispose()


def publish_marks(database_url: str) -> list[bool]:
    """Per row (in pk order): does it carry a publish mark (``queued_at``)?"""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            marks = session.exec(select(Media.queued_at).order_by(col(Media.pk))).all()
            return [mark is not None for mark in marks]
    finally:
        engine.dispose()


@dataclass
class Stack:
    url: str
    api_key: str
    database_url: str
    queue: redis.Redis

    def post(
        self,
        body: bytes,
        *,
        sig: str | None = "auto",
        tenant: str = "acme",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if sig == "auto":
            sig = signature(body, HMAC_KEY)
        if sig is not None:
            sent["X-Webhook-Signature"] = sig
        return httpx.post(f"{self.url}/webhooks/{tenant}", content=body, headers=sent, timeout=30)

    def queued(self) -> int:
        return int(self.queue.llen(ARCHIVE_QUEUE))


@pytest.fixture
def stack(database_url: str, redis_url: str) -> Iterator[Stack]:
    queue = redis.Redis.from_url(redis_url)
    queue.delete(ARCHIVE_QUEUE)
    api_key = add_tenant(database_url)
    with serve(settings_for(database_url, redis_url)) as url:
        yield Stack(url=url, api_key=api_key, database_url=database_url, queue=queue)
    queue.delete(ARCHIVE_QUEUE)
    queue.close()


def media_body(media_id: str = "abc123", **extra: Any) -> bytes:
    env = media_envelope(
        media_id=media_id,
        message_id="3EB0X",
        session="support",
        message_type="image",
        mime_type="image/jpeg",
        size=1000,
        **extra,
    )
    return json.dumps(env).encode()


def test_media_message_is_recorded_and_queued_with_202(stack: Stack) -> None:
    answer = stack.post(media_body())
    assert answer.status_code == 202
    assert answer.json() == {"status": "queued", "id": "abc123"}
    assert count_rows(stack.database_url) == 1
    assert stack.queued() == 1


def test_duplicate_delivery_is_acknowledged_without_a_second_row(stack: Stack) -> None:
    body = media_body()
    assert stack.post(body).status_code == 202
    again = stack.post(body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert count_rows(stack.database_url) == 1


def test_concurrent_duplicates_make_one_row(stack: Stack) -> None:
    body = media_body("race")
    with httpx.Client(timeout=30) as client:
        headers = {"X-Webhook-Signature": signature(body, HMAC_KEY)}
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    client.post(
                        f"{stack.url}/webhooks/acme", content=body, headers=headers
                    ).status_code
                )
            )
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == [200] * 7 + [202]
    assert count_rows(stack.database_url) == 1


def test_auto_persisted_media_is_recorded_archived_without_queueing(stack: Stack) -> None:
    answer = stack.post(media_body("auto1", media_url="https://bucket.s3.amazonaws.com/x.jpg"))
    assert answer.status_code == 202 and answer.json()["status"] == "archived"
    assert stack.queued() == 0
    row = httpx.get(
        f"{stack.url}/api/media/auto1", headers={"Authorization": f"Bearer {stack.api_key}"}
    )
    assert row.json()["data"]["s3Url"] == "https://bucket.s3.amazonaws.com/x.jpg"


@pytest.mark.parametrize(
    "envelope",
    [
        {"event": "message.ack", "payload": {"id": "x"}},
        {"event": "session.status", "session": "s", "payload": {"status": "connected"}},
        {"event": "command.result", "data": {"ok": True}},
        {"event": "an.event.from.the.future", "payload": {}},
        {
            "event": "message.received",
            "session": "s",
            "payload": {"id": "t1", "type": "text", "body": "hi"},
        },
    ],
)
def test_other_events_and_text_are_acknowledged_and_ignored(
    stack: Stack, envelope: dict[str, Any]
) -> None:
    answer = stack.post(json.dumps(envelope).encode())
    assert answer.status_code == 200 and answer.json() == {"status": "ignored"}
    assert count_rows(stack.database_url) == 0


def test_invalid_json_under_a_valid_signature_is_400(stack: Stack) -> None:
    answer = stack.post(b"{not json")
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]


def test_media_with_unusable_fields_is_400_naming_the_field(stack: Stack) -> None:
    body = json.loads(media_body())
    body["payload"]["fileLength"] = -5
    answer = stack.post(json.dumps(body).encode())
    assert answer.status_code == 400 and "fileLength" in answer.json()["error"]


@pytest.mark.parametrize(
    "sig",
    [None, "", "sha256=zz", "sha256=" + "0" * 64, signature(b"other body", HMAC_KEY), "md5=abc"],
)
def test_missing_malformed_or_wrong_signature_is_401(stack: Stack, sig: str | None) -> None:
    answer = stack.post(media_body(), sig=sig)
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid signature"}
    assert count_rows(stack.database_url) == 0


def test_body_signed_with_another_tenants_key_is_401(stack: Stack) -> None:
    add_tenant(stack.database_url, "globex", "globex-hmac-key")
    body = media_body()
    assert stack.post(body, sig=signature(body, "globex-hmac-key")).status_code == 401


@pytest.mark.parametrize("tenant", ["nobody", "..", "a%2Fb", "x" * 100])
def test_unknown_tenant_looks_exactly_like_a_bad_signature(stack: Stack, tenant: str) -> None:
    answer = stack.post(media_body(), tenant=tenant)
    assert answer.status_code in (401, 404)
    if answer.status_code == 401:
        assert answer.json() == {"error": "invalid signature"}


def test_body_over_the_cap_is_413(stack: Stack) -> None:
    answer = stack.post(b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413
    assert count_rows(stack.database_url) == 0


def test_chunked_body_over_the_cap_is_413(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 100_000

    answer = httpx.post(f"{stack.url}/webhooks/acme", content=chunks(), timeout=30)
    assert answer.status_code == 413


def test_healthz_answers_while_up(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").status_code == 200


def test_broker_down_is_503_with_retry_after_and_the_retry_succeeds(
    database_url: str, redis_url: str
) -> None:
    add_tenant(database_url)
    body = media_body("b1")
    sig = signature(body, HMAC_KEY)
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    with serve(settings_for(database_url, dead_broker)) as url:
        answer = httpx.post(
            f"{url}/webhooks/acme", content=body, headers={"X-Webhook-Signature": sig}, timeout=60
        )
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()
    # Committed marked, as every row; the failed publish took its mark back, so the
    # dispatcher would queue it too, were Titan's retry never to come.
    assert publish_marks(database_url) == [False]
    queue = redis.Redis.from_url(redis_url)
    queue.delete(ARCHIVE_QUEUE)
    # Titan retries once the broker is back: the pending row is queued this time.
    with serve(settings_for(database_url, redis_url)) as url:
        retry = httpx.post(
            f"{url}/webhooks/acme", content=body, headers={"X-Webhook-Signature": sig}, timeout=30
        )
    assert retry.status_code in (200, 202)
    assert queue.llen(ARCHIVE_QUEUE) == 1
    assert count_rows(database_url) == 1
    assert publish_marks(database_url) == [True]
    queue.delete(ARCHIVE_QUEUE)


def test_database_down_is_503_with_retry_after(redis_url: str) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with serve(settings_for(dead_db, redis_url)) as url:
        body = media_body()
        answer = httpx.post(
            f"{url}/webhooks/acme",
            content=body,
            headers={"X-Webhook-Signature": signature(body, HMAC_KEY)},
            timeout=30,
        )
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()


def test_query_api_needs_a_valid_key(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/api/media").status_code == 401
    bad = httpx.get(f"{stack.url}/api/media", headers={"Authorization": "Bearer tak_nope"})
    assert bad.status_code == 401


def test_query_api_pages_newest_first_and_filters(stack: Stack) -> None:
    for i in range(5):
        assert stack.post(media_body(f"p{i}")).status_code == 202
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    first = httpx.get(f"{stack.url}/api/media", params={"limit": 3}, headers=auth).json()
    assert [d["id"] for d in first["data"]] == ["p4", "p3", "p2"]
    rest = httpx.get(
        f"{stack.url}/api/media", params={"limit": 3, "cursor": first["nextCursor"]}, headers=auth
    ).json()
    assert [d["id"] for d in rest["data"]] == ["p1", "p0"] and rest["nextCursor"] is None
    queued = httpx.get(
        f"{stack.url}/api/media", params={"status": "queued", "session": "support"}, headers=auth
    )
    assert len(queued.json()["data"]) == 5
    none = httpx.get(f"{stack.url}/api/media", params={"messageId": "nope"}, headers=auth).json()
    assert none == {"data": [], "nextCursor": None}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"status": "lost"}, "status"),
    ],
)
def test_query_api_rejects_bad_parameters_naming_them(
    stack: Stack, params: dict[str, str], name: str
) -> None:
    answer = httpx.get(
        f"{stack.url}/api/media",
        params=params,
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )
    assert answer.status_code == 400 and answer.json()["error"].startswith(name)


def test_query_api_never_shows_another_tenants_rows(stack: Stack) -> None:
    assert stack.post(media_body("mine")).status_code == 202
    other_key = add_tenant(stack.database_url, "globex", "globex-hmac-key")
    other = {"Authorization": f"Bearer {other_key}"}
    assert httpx.get(f"{stack.url}/api/media", headers=other).json()["data"] == []
    assert httpx.get(f"{stack.url}/api/media/mine", headers=other).status_code == 404


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_metrics_count_webhooks_by_outcome_and_report_the_backlog(stack: Stack) -> None:
    before = httpx.get(f"{stack.url}/metrics").text
    assert metric(before, "archiver_oldest_unarchived_age_seconds") == 0
    assert stack.post(media_body("m1")).status_code == 202
    assert stack.post(media_body("m1")).status_code == 200
    assert stack.post(media_body("m2"), sig="sha256=" + "0" * 64).status_code == 401
    time.sleep(1.1)
    text = httpx.get(f"{stack.url}/metrics").text
    assert metric(text, 'archiver_webhooks_total{outcome="queued"}') == 1
    assert metric(text, 'archiver_webhooks_total{outcome="duplicate"}') == 1
    assert metric(text, 'archiver_webhooks_total{outcome="unauthorized"}') == 1
    assert metric(text, 'archiver_media_rows{status="queued"}') == 1
    assert metric(text, "archiver_oldest_unarchived_age_seconds") >= 1
    assert metric(text, "archiver_webhook_accept_seconds_count") == 3
