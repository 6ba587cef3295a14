"""The query API over real HTTP on SQLite and PostgreSQL: filters, paging, isolation, content."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from archiver.infra.db import make_engine, session_scope
from archiver.media import query as queries
from archiver.media.recording import MediaItem
from archiver.secrets_box import SecretBox
from archiver.tables import Media, Tenant
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import fixtures
from devstack.fixtures import MASTER_KEY, settings_for
from devstack.services import s3_client
from tests.test_receiver import serve

ADMIN_KEY = "admin-" + secrets.token_urlsafe(24)
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@dataclass
class World:
    url: str
    engine: Any
    keys: dict[str, str]
    tenant_ids: dict[str, int]
    s3: Any
    buckets: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)

    def get(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=30)

    def ids_of(self, tenant: str, **params: Any) -> list[str]:
        answer = self.get("/api/media", self.keys[tenant], limit=500, **params)
        assert answer.status_code == 200, answer.text
        return [d["id"] for d in answer.json()["data"]]

    def add(self, tenant: str, media_id: str, *, received: datetime, **fields: Any) -> int:
        """A row as the receiver would record it, then any column overridden."""
        item = MediaItem(
            media_id=media_id,
            session=fields.pop("session", "support"),
            message_id=fields.pop("message_id", "MSG-" + media_id),
            message_type=fields.pop("type", "image"),
            mime_type=fields.pop("mime", "image/jpeg"),
            file_length=fields.pop("length", 1000),
            sender=fields.pop("sender", "+5511999999999"),
            caption=None,
            filename=None,
            media_url=None,
            message_at=None,
            event_id=None,
            sender_lid=fields.pop("lid", "1234@lid"),
        )
        with session_scope(self.engine) as session:
            owner = session.get(Tenant, self.tenant_ids[tenant])
        assert owner is not None
        pk = fixtures.record_item(self.engine, tenant=owner, item=item, received_at=received).pk
        if fields:
            with session_scope(self.engine) as session:
                session.execute(update(Media).where(col(Media.pk) == pk).values(**fields))
        self.ids.setdefault(tenant, []).append(media_id)
        return pk


@pytest.fixture
def world(database_url: str, redis_url: str, s3_endpoint: str) -> Iterator[World]:
    engine = make_engine(database_url)
    s3 = s3_client(s3_endpoint)
    keys, tenant_ids, buckets = {}, {}, {}
    for name in ("acme", "globex"):
        bucket = f"q-{name}-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        with session_scope(engine) as session:
            tenant, key = create_tenant(
                session,
                box=SecretBox(MASTER_KEY),
                spec=TenantSpec(
                    name=name,
                    hmac_key="hmac-key-" + name,
                    titan_url="http://titan.invalid",
                    titan_api_key="titan_x",
                    strategy="download",
                    s3_bucket=bucket,
                    s3_endpoint=s3_endpoint,
                    s3_region="us-east-1",
                    s3_access_key_id="testing",
                    s3_secret_access_key="testing",
                ),
            )
        keys[name], tenant_ids[name], buckets[name] = key, tenant.id or 0, bucket
    settings = settings_for(
        database_url, redis_url, admin_api_key=ADMIN_KEY, presign_ttl_seconds=60
    )
    with serve(settings) as url:
        yield World(
            url=url, engine=engine, keys=keys, tenant_ids=tenant_ids, s3=s3, buckets=buckets
        )
    engine.dispose()


def seed(world: World) -> None:
    rows: list[tuple[str, dict[str, Any]]] = [
        ("img1", {"type": "image", "mime": "image/jpeg", "length": 100}),
        (
            "img2",
            {
                "type": "image",
                "mime": "image/png",
                "length": 5_000,
                "session": "sales",
                "sender": "+4477",
                "lid": "99@lid",
            },
        ),
        (
            "vid1",
            {
                "type": "video",
                "mime": "video/mp4",
                "length": 70_000_000,
                "session": "sales",
                "status": "archived",
                "persisted": True,
            },
        ),
        (
            "doc1",
            {
                "type": "document",
                "mime": "application/pdf",
                "length": 20_000,
                "status": "failed",
                "last_error": "titan answered 404",
            },
        ),
        (
            "aud1",
            {"type": "audio", "mime": "audio/ogg", "length": 3_000, "message_id": "3EB0SPECIAL"},
        ),
        ("stk1", {"type": "sticker", "mime": "image/webp", "length": 800, "session": "sales"}),
    ]
    for i, (media_id, fields) in enumerate(rows):
        world.add("acme", media_id, received=T0 + timedelta(hours=i), **fields)
    world.add("globex", "img1", received=T0)  # the same id in another tenant


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["stk1", "aud1", "doc1", "vid1", "img2", "img1"]),
        ({"order": "asc"}, ["img1", "img2", "vid1", "doc1", "aud1", "stk1"]),
        ({"session": "sales"}, ["stk1", "vid1", "img2"]),
        ({"status": "failed"}, ["doc1"]),
        ({"status": "archived"}, ["vid1"]),
        ({"type": "image"}, ["img2", "img1"]),
        ({"type": "sticker"}, ["stk1"]),
        ({"mimeType": "image/"}, ["stk1", "img2", "img1"]),
        ({"mimeType": "image/png"}, ["img2"]),
        ({"mimeType": "IMAGE/PNG"}, ["img2"]),
        ({"messageId": "3EB0SPECIAL"}, ["aud1"]),
        ({"sender": "+4477"}, ["img2"]),
        ({"sender": "99@lid"}, ["img2"]),
        ({"persisted": "true"}, ["vid1"]),
        ({"persisted": "false"}, ["stk1", "aud1", "doc1", "img2", "img1"]),
        ({"since": "2025-03-01T02:00:00Z"}, ["stk1", "aud1", "doc1", "vid1"]),
        ({"until": "2025-03-01T02:00:00+00:00"}, ["img2", "img1"]),
        ({"since": "2025-03-01T01:00:00Z", "until": "2025-03-01T03:00:00Z"}, ["vid1", "img2"]),
        ({"minSize": "5000"}, ["doc1", "vid1", "img2"]),
        ({"maxSize": "3000"}, ["stk1", "aud1", "img1"]),
        ({"minSize": "1000", "maxSize": "20000"}, ["aud1", "doc1", "img2"]),
        ({"type": "image", "session": "sales", "mimeType": "image/"}, ["img2"]),
        ({"session": "nobody"}, []),
    ],
)
def test_each_filter_selects_exactly_its_rows(
    world: World, params: dict[str, str], expected: list[str]
) -> None:
    seed(world)
    assert world.ids_of("acme", **params) == expected


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"status": "lost"}, "status"),
        ({"type": "gif"}, "type"),
        ({"mimeType": "jpeg"}, "mimeType"),
        ({"persisted": "yes"}, "persisted"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-01"}, "until"),
        ({"since": "2025-02-30T00:00:00Z"}, "since"),
        ({"cursor": ""}, "cursor"),
        ({"minSize": "-1"}, "minSize"),
        ({"maxSize": "1e3"}, "maxSize"),
        ({"order": "random"}, "order"),
        ({"session": "../etc"}, "session"),
        ({"colour": "red"}, "colour"),
        ({"sender": "a\x01b"}, "sender"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    world: World, params: dict[str, str], name: str
) -> None:
    answer = world.get("/api/media", world.keys["acme"], **params)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(name + ":")


def test_a_cursor_is_a_position_usable_in_either_order(world: World) -> None:
    seed(world)
    page = world.get("/api/media", world.keys["acme"], limit=2).json()
    assert [d["id"] for d in page["data"]] == ["stk1", "aud1"]
    cursor = page["nextCursor"]
    assert world.ids_of("acme", cursor=cursor) == ["doc1", "vid1", "img2", "img1"]
    assert world.ids_of("acme", cursor=cursor, order="asc") == ["stk1"]


def test_reversed_ranges_are_empty_not_errors(world: World) -> None:
    seed(world)
    assert world.ids_of("acme", since="2025-03-02T00:00:00Z", until="2025-03-01T00:00:00Z") == []
    assert world.ids_of("acme", minSize="10", maxSize="5") == []


@pytest.mark.parametrize(
    "value",
    [
        "2025-03-01T00:00:00.123456789Z",
        "2025-03-01t00:00:00z",
        "2025-03-01 00:00:00+00:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:60-01:00",
    ],
)
def test_any_rfc3339_date_time_is_accepted(world: World, value: str) -> None:
    assert world.get("/api/media", world.keys["acme"], since=value).status_code == 200


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_paging_has_no_gaps_or_repeats_while_rows_arrive(world: World, order: str) -> None:
    for i in range(120):
        world.add("acme", f"base{i:03d}", received=T0 + timedelta(minutes=i))
    stop = threading.Event()

    def insert_more() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            world.add("acme", f"late{n:03d}", received=T0 + timedelta(days=1, minutes=n))
            n += 1

    writer = threading.Thread(target=insert_more)
    writer.start()
    seen: list[str] = []
    cursor = None
    try:
        while True:
            params: dict[str, Any] = {"limit": 7, "order": order}
            if cursor:
                params["cursor"] = cursor
            page = world.get("/api/media", world.keys["acme"], **params).json()
            seen += [d["id"] for d in page["data"] if d["id"].startswith("base")]
            cursor = page["nextCursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        writer.join()
    expected = [f"base{i:03d}" for i in range(120)]
    assert seen == (expected[::-1] if order == "desc" else expected)


def test_admin_key_sees_every_tenant_and_can_narrow_to_one(world: World) -> None:
    seed(world)
    everything = world.get("/api/media", ADMIN_KEY, limit=500).json()["data"]
    assert sorted((d["tenant"], d["id"]) for d in everything) == sorted(
        [("acme", i) for i in world.ids["acme"]] + [("globex", "img1")]
    )
    only = world.get("/api/media", ADMIN_KEY, tenant="globex").json()["data"]
    assert [(d["tenant"], d["id"]) for d in only] == [("globex", "img1")]
    one = world.get("/api/media/img1", ADMIN_KEY, tenant="globex").json()["data"]
    assert one["tenant"] == "globex"
    assert world.get("/api/media/img1", ADMIN_KEY).status_code == 400  # ambiguous without tenant
    assert world.get("/api/media", ADMIN_KEY, tenant="nobody").status_code == 404


@pytest.mark.parametrize(("reader", "owner"), [("acme", "globex"), ("globex", "acme")])
def test_a_tenant_key_never_reaches_another_tenants_rows(
    world: World, reader: str, owner: str
) -> None:
    world.add(
        owner,
        "secret-" + owner,
        received=T0,
        status="archived",
        bucket=world.buckets[owner],
        object_key="k",
        persisted=True,
    )
    key = world.keys[reader]
    assert "secret-" + owner not in world.ids_of(reader)
    assert world.get("/api/media", key, tenant=owner).status_code == 403
    assert world.get(f"/api/media/secret-{owner}", key).status_code == 404
    assert world.get(f"/api/media/secret-{owner}", key, tenant=owner).status_code == 403
    assert world.get(f"/api/media/secret-{owner}/content", key).status_code == 404
    assert world.get("/api/stats", key, tenant=owner).status_code == 403
    own = world.get("/api/stats", key).json()["data"]
    assert sum(v["count"] for v in own["byStatus"].values()) == len(world.ids.get(reader, []))


@pytest.mark.parametrize(
    "path", ["/api/media", "/api/media/x", "/api/media/x/content", "/api/stats"]
)
@pytest.mark.parametrize(
    "key",
    [None, "tak_wrong", "Basic abc", ADMIN_KEY[:-1]],
    # Named, not shown: a key does not belong in a test's name, and the admin key is made
    # at import, so its value would make each collection's ids differ.
    ids=["none", "unknown", "basic", "admin-key-but-one-char"],
)
def test_every_endpoint_needs_a_valid_key(world: World, path: str, key: str | None) -> None:
    answer = world.get(path, key)
    assert answer.status_code == 401
    assert answer.json() == {"error": "missing or invalid API key"}


def test_content_redirects_to_a_fresh_presigned_url_of_the_right_bytes(world: World) -> None:
    data = secrets.token_bytes(300_000)
    bucket = world.buckets["acme"]
    world.s3.put_object(Bucket=bucket, Key="acme/support/file.jpg", Body=data)
    world.add(
        "acme",
        "photo/1",
        received=T0,
        status="archived",
        bucket=bucket,
        object_key="acme/support/file.jpg",
        persisted=True,
        size=len(data),
        s3_url=f"s3://{bucket}/acme/support/file.jpg",
    )
    answer = world.get("/api/media/photo%2F1/content", world.keys["acme"])
    assert answer.status_code == 307 and answer.headers["Cache-Control"] == "no-store"
    location = answer.headers["Location"]
    assert "X-Amz-Expires=60" in location and "X-Amz-Signature=" in location
    fetched = httpx.get(location).content
    assert hashlib.sha256(fetched).hexdigest() == hashlib.sha256(data).hexdigest()
    with session_scope(world.engine) as session:
        row = queries.get_media(session, tenant_id=world.tenant_ids["acme"], media_id="photo/1")
    assert row is not None and "X-Amz" not in (row.s3_url or "")  # never stored


def test_content_is_inline_only_for_plain_media_and_an_attachment_otherwise(
    world: World,
) -> None:
    bucket = world.buckets["acme"]
    for media_id, mime, expected in (
        ("pic", "image/jpeg", "inline"),
        ("page", "text/html", "attachment"),  # a hostile upload must not render on click
        ("vector", "image/svg+xml", "attachment"),
    ):
        key = f"acme/support/{media_id}"
        world.s3.put_object(Bucket=bucket, Key=key, Body=b"<script>alert(1)</script>")
        world.add(
            "acme",
            media_id,
            received=T0,
            mime=mime,
            status="archived",
            bucket=bucket,
            object_key=key,
            persisted=True,
        )
        location = world.get(f"/api/media/{media_id}/content", world.keys["acme"]).headers[
            "Location"
        ]
        disposition = httpx.get(location).headers["Content-Disposition"]
        assert disposition == f'{expected}; filename="{media_id}"'


def test_content_of_media_persisted_by_titan_into_the_tenant_bucket(world: World) -> None:
    bucket = world.buckets["acme"]
    world.s3.put_object(Bucket=bucket, Key="titan/support/M1", Body=b"persisted bytes")
    world.add(
        "acme",
        "M1",
        received=T0,
        status="archived",
        persisted=True,
        s3_url=f"https://{bucket}.s3.amazonaws.com/titan/support/M1",
    )
    location = world.get("/api/media/M1/content", world.keys["acme"]).headers["Location"]
    assert httpx.get(location).content == b"persisted bytes"


def test_content_of_unarchived_or_foreign_files_is_409(world: World) -> None:
    world.add("acme", "pending", received=T0)
    world.add(
        "acme",
        "elsewhere",
        received=T0,
        status="archived",
        persisted=True,
        s3_url="https://other-bucket.s3.amazonaws.com/x.jpg",
    )
    assert world.get("/api/media/pending/content", world.keys["acme"]).status_code == 409
    assert world.get("/api/media/elsewhere/content", world.keys["acme"]).status_code == 409


def test_stats_count_rows_and_bytes_by_status_and_type(world: World) -> None:
    seed(world)
    data = world.get("/api/stats", world.keys["acme"]).json()["data"]
    assert data["byStatus"]["queued"] == {"count": 4, "bytes": 100 + 5_000 + 3_000 + 800}
    assert data["byStatus"]["archived"] == {"count": 1, "bytes": 70_000_000}
    assert data["byType"]["image"] == {"count": 2, "bytes": 5_100}
    assert data["oldestUnarchivedAgeSeconds"] > 0
    admin = world.get("/api/stats", ADMIN_KEY).json()["data"]
    assert admin["byType"]["image"]["count"] == 3


def test_openapi_document_and_docs_page_describe_every_filter(world: World) -> None:
    doc = world.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    names = {p["name"] for p in doc["paths"]["/api/media"]["get"]["parameters"]}
    assert {
        "session",
        "status",
        "type",
        "mimeType",
        "messageId",
        "sender",
        "persisted",
        "since",
        "until",
        "minSize",
        "maxSize",
        "order",
        "limit",
        "cursor",
        "tenant",
    } <= names
    page = world.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "mimeType" in page.text and "/api/media/{id}/content" in page.text


@pytest.mark.parametrize("cursor", ["cz9.c3adld38iqlfq", "c1msk1sz2yfl1hs.l3eduzaa", "c0.0"])
def test_out_of_range_cursors_are_positions_not_errors(world: World, cursor: str) -> None:
    seed(world)
    for order in ("asc", "desc"):
        answer = world.get("/api/media", world.keys["acme"], cursor=cursor, order=order)
        assert answer.status_code == 200, answer.text
