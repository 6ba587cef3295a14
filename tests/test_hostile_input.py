"""Property-based attack on the public surface: thousands of hostile webhook deliveries and
query-API requests against a real receiver over HTTP, on SQLite and PostgreSQL.

What must hold for every input: never a 5xx; nothing recorded from an unsigned or wrongly
signed body; a signed body records rows only for the tenant whose key signed it, with object
keys that stay inside that tenant's prefix; a tenant's query key never sees another tenant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlmodel import col

from archiver.infra.db import make_engine, session_scope
from archiver.media.query import NAMES
from archiver.object_keys import DEFAULT_TEMPLATE, object_key
from archiver.tables import Media, Tenant
from devstack.fixtures import settings_for
from devstack.rig import RedisDatabases
from tests.conftest import migrated_database
from tests.test_receiver import add_tenant, serve
from titan_simulator.sender import media_envelope, signature

EXAMPLES = int(os.environ.get("ARCHIVER_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # CI explores the same inputs every run; a developer's runs explore new ones.
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEYS = {"alpha": "alpha-hmac-key-123", "beta": "beta-hmac-key-456"}
ADMIN = "admin-key-for-the-fuzzer-0123456789"


@dataclass
class Target:
    url: str
    database_url: str
    api_keys: dict[str, str]
    client: httpx.Client
    ui_cookies: dict[str, str] = field(default_factory=dict)

    def post(self, tenant: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(f"{self.url}/webhooks/{tenant}", content=body, headers=headers)

    def rows(self) -> list[tuple[str, str, str, str | None, datetime | None, datetime | None]]:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                query = select(
                    col(Tenant.name),
                    col(Media.media_id),
                    col(Media.session),
                    col(Media.mime_type),
                    col(Media.message_at),
                    col(Media.received_at),
                ).join(Tenant, col(Tenant.id) == col(Media.tenant_id))
                return [tuple(r) for r in session.execute(query)]
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def target(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: RedisDatabases,
    pg_admin_url: str | None,
) -> Iterator[Target]:
    if request.param == "postgres" and pg_admin_url is None:
        pytest.skip("no PostgreSQL available")
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with migrated_database(request.param, tmp, pg_admin_url) as database_url:
        api_keys = {name: add_tenant(database_url, name, key) for name, key in KEYS.items()}
        broker = redis_dbs.take()
        with (
            serve(
                settings_for(database_url, broker, max_body_bytes=64 * 1024, admin_api_key=ADMIN)
            ) as url,
            httpx.Client(timeout=30) as client,
        ):
            yield Target(url, database_url, {**api_keys, "admin": ADMIN}, client)


# -- hostile values -----------------------------------------------------------------------

NASTY_STRINGS = st.sampled_from(
    [
        "../../etc/passwd",
        "..",
        ".",
        "a/../../b",
        "%2e%2e%2f",
        "\x00",
        "a\x00b",
        "\r\nX-Injected: 1",
        "\u202e",
        "\ud800",
        "😀" * 70,
        "'; DROP TABLE media; --",
        "${jndi:ldap://x}",
        "{tenant}",
        "{0.__class__}",
        "x" * 5000,
        "",
        " ",
        "beta/other-tenant",
    ]
)
TEXT = st.one_of(NASTY_STRINGS, st.text(max_size=300))
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSONISH = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A Titan media envelope with any of its fields replaced by something hostile."""
    env = media_envelope(
        media_id=draw(st.one_of(TEXT, st.integers())),
        message_id="3EB0" + draw(st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=8)),
        session="support",
        message_type="image",
        mime_type="image/jpeg",
        size=1000,
        caption=draw(st.one_of(st.none(), TEXT)),
    )
    payload = env["payload"]
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "mediaId",
                    "mimeType",
                    "fileLength",
                    "type",
                    "from",
                    "timestamp",
                    "filename",
                    "mediaUrl",
                    "id",
                    "caption",
                    "media",
                ]
            ),
            max_size=4,
        )
    ):
        payload[name] = draw(JSONISH)
    if draw(st.booleans()):
        env["session"] = draw(st.one_of(TEXT, JSONISH))
    if draw(st.integers(0, 9)) == 0:
        env["event"] = draw(st.one_of(TEXT, st.sampled_from(["message.ack", None])))
    if draw(st.integers(0, 9)) == 0:
        env["payload"] = draw(JSONISH)
    return env


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


RAW_BODIES = st.one_of(
    st.binary(max_size=2000),
    envelopes().map(_encode),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.just(b'{"event": "message.received", "payload": ' * 200),
)


# -- the webhook endpoint -----------------------------------------------------------------


def _header_value(text: str) -> str:
    """What can travel as an HTTP header value (the client refuses the rest)."""
    return "".join(c for c in text if 0x20 <= ord(c) < 0x7F).strip()[:500]


@FUZZ
@given(
    body=RAW_BODIES,
    header=st.one_of(
        st.none(),
        st.just("sha256="),
        st.one_of(TEXT, JSONISH.map(str)).map(_header_value),
        st.text(alphabet="0123456789abcdefABCDEF", max_size=70).map(lambda h: "sha256=" + h),
    ),
)
def test_unsigned_or_badly_signed_bodies_are_refused_and_record_nothing(
    target: Target, body: bytes, header: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Webhook-Signature"] = header
    before = len(target.rows())
    answer = target.post("alpha", body, headers)
    assert answer.status_code in (401, 413), answer.text
    assert len(target.rows()) == before


@FUZZ
@given(env=envelopes(), wrong=st.sampled_from(["beta", "other", "truncated", "body"]))
def test_a_signature_by_the_wrong_key_or_of_another_body_records_nothing(
    target: Target, env: dict[str, Any], wrong: str
) -> None:
    body = _encode(env)
    if wrong == "beta":
        sig = signature(body, KEYS["beta"])  # another tenant's key
    elif wrong == "other":
        sig = signature(body, "not-a-tenant-key")
    elif wrong == "truncated":
        sig = signature(body, KEYS["alpha"])[:-2]
    else:
        sig = signature(body + b" ", KEYS["alpha"])
    before = len(target.rows())
    answer = target.post("alpha", body, {"X-Webhook-Signature": sig})
    assert answer.status_code in (401, 413)
    assert len(target.rows()) == before


@FUZZ
@given(env=envelopes(), tenant=st.sampled_from(sorted(KEYS)))
def test_signed_hostile_envelopes_never_5xx_and_stay_in_their_tenant(
    target: Target, env: dict[str, Any], tenant: str
) -> None:
    body = _encode(env)
    answer = target.post(tenant, body, {"X-Webhook-Signature": signature(body, KEYS[tenant])})
    assert answer.status_code in (200, 202, 400, 413), answer.text
    if answer.status_code == 400:
        assert set(answer.json()) == {"error"} and "Traceback" not in answer.text
    if answer.status_code == 202:
        media_id = answer.json()["id"]
        owners = {name for name, mid, *_ in target.rows() if mid == media_id}
        assert tenant in owners
    _assert_keys_contained(target)


@FUZZ
@given(tenant=st.one_of(TEXT, st.sampled_from(["alpha/..", "..", "%2e%2e", "alpha%00"])))
def test_hostile_tenant_names_in_the_path_are_refused(target: Target, tenant: str) -> None:
    body = _encode(
        media_envelope(
            media_id="m1",
            message_id="x",
            session="s",
            message_type="image",
            mime_type="image/jpeg",
            size=1,
        )
    )
    sig = signature(body, KEYS["alpha"])
    raw = quote_from_bytes(tenant.encode("utf-8", "surrogatepass"), safe=b"").encode()
    url = httpx.URL(target.url).copy_with(raw_path=b"/webhooks/" + raw)
    answer = target.client.post(url, content=body, headers={"X-Webhook-Signature": sig})
    if tenant != "alpha":
        # 307: an empty name is Starlette's trailing-slash redirect; nothing is recorded.
        assert answer.status_code in (307, 401, 404, 405), answer.text


def _assert_keys_contained(target: Target) -> None:
    for tenant, media_id, session, mime, message_at, received_at in target.rows():
        key = object_key(
            DEFAULT_TEMPLATE,
            prefix="",
            tenant=tenant,
            session=session,
            media_id=media_id,
            mime_type=mime,
            when=message_at or received_at or datetime.now(UTC),
        )
        parts = key.split("/")
        assert parts[0] == tenant and len(parts) == 4, key
        assert all(p not in ("", ".", "..") for p in parts), key
        assert all(0x20 < ord(c) < 0x7F for c in key), key


# -- the query API ------------------------------------------------------------------------

PARAM_VALUES = st.one_of(
    TEXT,
    st.integers().map(str),
    st.sampled_from(["true", "false", "2026-01-01T00:00:00Z", "9" * 40, "-1", "c" + "z" * 30]),
)


@FUZZ
@given(
    params=st.dictionaries(
        st.one_of(st.sampled_from(sorted(NAMES | {"cursor", "limit", "order", "tenant"})), TEXT),
        PARAM_VALUES,
        max_size=5,
    ),
    who=st.sampled_from(["alpha", "beta", "admin", "none", "junk"]),
)
def test_hostile_queries_never_5xx_and_never_cross_tenants(
    target: Target, params: dict[str, str], who: str
) -> None:
    headers = {}
    if who in target.api_keys:
        headers["Authorization"] = f"Bearer {target.api_keys[who]}"
    elif who == "junk":
        headers["Authorization"] = "Bearer tak_" + "A" * 43
    clean = {
        k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode()
        for k, v in params.items()
    }
    answer = target.client.get(f"{target.url}/api/media", params=clean, headers=headers)
    if who not in target.api_keys:
        assert answer.status_code == 401
        return
    assert answer.status_code in (200, 400, 403, 404), answer.text
    if answer.status_code == 200 and who != "admin":
        assert {row["tenant"] for row in answer.json()["data"]} <= {who}


@FUZZ
@given(
    media_id=TEXT,
    suffix=st.sampled_from(["", "/content"]),
    who=st.sampled_from([*sorted(KEYS), "admin"]),
    tenant=st.one_of(st.none(), TEXT),
)
def test_hostile_media_ids_in_the_path_never_5xx(
    target: Target, media_id: str, suffix: str, who: str, tenant: str | None
) -> None:
    raw = media_id.encode("utf-8", "surrogatepass")
    path = b"/api/media/" + quote_from_bytes(raw, safe=b"/").encode() + suffix.encode()
    if tenant is not None:
        path += b"?tenant=" + quote_from_bytes(tenant.encode("utf-8", "surrogatepass")).encode()
    url = httpx.URL(target.url).copy_with(raw_path=path)
    answer = target.client.get(
        url, headers={"Authorization": f"Bearer {target.api_keys[who]}"}, follow_redirects=False
    )
    assert answer.status_code in (200, 307, 400, 403, 404, 409), answer.text
    if answer.status_code == 200 and who != "admin":
        data = answer.json()["data"]  # the listing itself when the id is empty
        assert {row["tenant"] for row in (data if isinstance(data, list) else [data])} <= {who}


# -- the dashboard --------------------------------------------------------------------------

UI_FIELDS = ["type", "status", "session", "sender", "from", "to", "minKb", "maxKb", "cursor"]


@FUZZ
@given(
    params=st.dictionaries(
        st.one_of(st.sampled_from([*UI_FIELDS, "tenant"]), TEXT), PARAM_VALUES, max_size=5
    ),
    who=st.sampled_from(["alpha", "admin"]),
)
def test_hostile_dashboard_filters_never_5xx_and_never_cross_tenants(
    target: Target, params: dict[str, str], who: str
) -> None:
    clean = {
        k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode()
        for k, v in params.items()
    }
    if who not in target.ui_cookies:
        signed_in = target.client.post(f"{target.url}/ui/login", data={"key": target.api_keys[who]})
        assert signed_in.status_code == 303
        target.ui_cookies[who] = signed_in.cookies["archiver_ui"]
        target.client.cookies.clear()
    answer = target.client.get(
        f"{target.url}/ui/media",
        params=clean,
        headers={"Cookie": f"archiver_ui={target.ui_cookies[who]}"},
    )
    assert answer.status_code in (200, 400), answer.text[:500]
    if answer.status_code == 200 and who == "alpha":
        assert 'data-tenant="beta"' not in answer.text


@FUZZ
@given(
    body=st.one_of(st.binary(max_size=3000), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
)
def test_hostile_sign_in_forms_and_cookies_never_5xx(target: Target, body: bytes) -> None:
    answer = target.client.post(
        f"{target.url}/ui/login",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code in (303, 400, 401), answer.text[:500]
    target.client.cookies.clear()
    cookie = {"Cookie": "archiver_ui=" + _header_value(body.decode("latin-1")).replace(";", "")}
    assert target.client.get(f"{target.url}/ui/media", headers=cookie).status_code == 303
    retried = target.client.post(f"{target.url}/ui/failures/retry", content=body, headers=cookie)
    assert retried.status_code in (400, 401, 403)
