"""The webhook's ways in (receiver/webhooks.py) answer alike, over real HTTP.

The fast path (``serve``, ahead of the router) takes every webhook while tracing is off; the
Starlette route takes them while it is on; the Procfile's server line answers them below
ASGI (receiver/protocol.py). Each case is sent through each, to one receiver each over the
same database and Redis, and the answers compared: status, JSON, headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from archiver.media.shapes import WebhookAnswer
from archiver.queue import ARCHIVE_QUEUE
from devstack.fixtures import settings_for
from receiver import protocol, webhooks
from receiver.app import Receiver, create_app
from receiver.intake import Intake
from receiver.resources import Resources
from tests.test_receiver import HMAC_KEY, add_tenant, media_body, serve_app
from titan_simulator.sender import signature

ROUTE, FAST, PROTOCOL = "route", "fast", "protocol"


@pytest.fixture
def receivers(database_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """Three receivers: the app under uvicorn's own protocol, the same app with the fast
    path bypassed, and the app as the Procfile's line serves it (its protocol, no access
    log)."""
    add_tenant(database_url)
    queue = redis.Redis.from_url(redis_url)
    settings = settings_for(database_url, redis_url)
    fast = create_app(settings)
    routed = create_app(settings)
    below = create_app(settings)
    assert isinstance(fast, Receiver) and isinstance(routed, Receiver)

    async def long_way(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette.__call__(routed, scope, receive, send)

    with (
        serve_app(fast) as fast_url,
        serve_app(long_way) as route_url,
        serve_app(below, http=protocol.WebhookProtocol, access_log=False) as protocol_url,
    ):
        yield {FAST: fast_url, ROUTE: route_url, PROTOCOL: protocol_url}
    queue.delete(ARCHIVE_QUEUE)
    queue.close()


def post(url: str, body: bytes, **headers: str) -> httpx.Response:
    sent = {"X-Webhook-Signature": signature(body, HMAC_KEY), **headers}
    return httpx.post(f"{url}/webhooks/acme", content=body, headers=sent, timeout=30)


def shape(answer: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in answer.headers.items() if k not in ("date", "x-request-id")}
    return answer.status_code, answer.content, headers


def test_every_way_gives_the_same_answers(
    receivers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_ones: list[str] = []
    below_ones: list[str] = []
    serve, answer = webhooks.serve, protocol._answer

    async def counted(res: Resources, tenant: str, scope: Scope, r: Receive, s: Send) -> None:
        fast_ones.append(tenant)
        await serve(res, tenant, scope, r, s)

    async def counted_below(res: Resources, tenant: str, cycle: RequestResponseCycle) -> None:
        below_ones.append(tenant)
        await answer(res, tenant, cycle)

    monkeypatch.setattr(webhooks, "serve", counted)
    monkeypatch.setattr(protocol, "_answer", counted_below)
    answers: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
    for way, url in receivers.items():
        body = media_body(f"paths-{way[0]}")  # ids of one length: the same content-length
        sent = [
            post(url, body),  # new: 202 queued
            post(url, body),  # again: 200 duplicate
            post(url, b"{not json"),  # 400
            post(url, body, **{"X-Webhook-Signature": "sha256=" + "0" * 64}),  # 401
            post(url, b"{" + b" " * 2_000_000 + b"}"),  # 413, connection closed
            httpx.post(f"{url}/webhooks/acme", content=body),  # no signature: 401
            httpx.post(f"{url}/webhooks/acme/more", content=body),  # no such route: 404
            httpx.get(f"{url}/webhooks/acme"),  # 405
        ]
        answers[way] = [shape(a) for a in sent]
    fast = [(s, b.replace(b"paths-f", b"paths-X"), h) for s, b, h in answers[FAST]]
    route = [(s, b.replace(b"paths-r", b"paths-X"), h) for s, b, h in answers[ROUTE]]
    below = [(s, b.replace(b"paths-p", b"paths-X"), h) for s, b, h in answers[PROTOCOL]]
    assert fast == route == below
    assert fast_ones == ["acme"] * 6  # the POSTs to /webhooks/acme of the fast receiver
    assert below_ones == ["acme"] * 6  # and of the one under the Procfile's protocol
    assert [s for s, _, _ in fast] == [202, 200, 400, 401, 413, 401, 404, 405]
    assert fast[0][1] == b'{"status":"queued","id":"paths-X"}'
    assert fast[0][2]["content-type"] == "application/json"
    assert fast[4][2]["connection"] == "close"


def test_every_way_carries_the_request_id(receivers: dict[str, str]) -> None:
    for way, url in receivers.items():
        given = post(url, media_body(f"rid-{way}"), **{"X-Request-ID": "lb-req-42"})
        assert given.headers["x-request-id"] == "lb-req-42"
        made = post(url, media_body(f"rid2-{way}"), **{"X-Request-ID": "bad id\twith tab"})
        assert made.headers["x-request-id"] not in ("", "bad id\twith tab")


def test_an_unexpected_error_is_a_500_in_the_error_shape_on_each(
    receivers: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Intake, "accept", broken)
    for url in receivers.values():
        answer = post(url, media_body("boom"))
        assert answer.status_code == 500
        assert answer.json() == {"error": "internal error"}
    assert len([r for r in caplog.records if r.getMessage() == "unhandled error"]) == 3


@pytest.mark.parametrize("status", ["queued", "archived", "duplicate"])
@pytest.mark.parametrize(
    "media_id", ["3EB0C431C26A1916E8A2", "12345", 'quote"and\\slash', "ünï/cødé 🙂", "a" * 255]
)
def test_the_webhook_answer_is_written_as_its_shape_writes_it(
    status: Literal["queued", "archived", "duplicate"], media_id: str
) -> None:
    assert WebhookAnswer.json_of(status, media_id) == (
        WebhookAnswer(status=status, id=media_id).to_json()
    )
