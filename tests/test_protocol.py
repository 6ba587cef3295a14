"""The Procfile's HTTP protocol (receiver/protocol.py) over raw sockets: what uvicorn's
own protocol keeps per connection still holds for webhooks answered below ASGI.

Keep-alive, pipelined requests answered in order, ``Expect: 100-continue``, HTTP/1.0's
closed connection, a client gone mid-body, and everything that is not a webhook going to
the app as ASGI.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import func
from sqlmodel import select
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack.fixtures import settings_for
from receiver import protocol
from receiver.app import create_app
from receiver.resources import Resources
from tests.test_receiver import HMAC_KEY, add_tenant, media_body, serve_app
from titan_simulator.sender import signature


@pytest.fixture
def address(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, int, list[str]]]:
    """The receiver as the Procfile serves it (its protocol, no access log): host, port,
    and the tenants of the webhooks its protocol answered itself."""
    add_tenant(database_url)
    below: list[str] = []
    answer = protocol._answer

    async def counted(res: Resources, tenant: str, cycle: RequestResponseCycle) -> None:
        below.append(tenant)
        await answer(res, tenant, cycle)

    monkeypatch.setattr(protocol, "_answer", counted)
    app = create_app(settings_for(database_url, redis_url))
    with serve_app(app, http=protocol.WebhookProtocol, access_log=False) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), below


def request(media_id: str, *, version: str = "1.1", expect: bool = False) -> bytes:
    body = media_body(media_id)
    head = (
        f"POST /webhooks/acme HTTP/{version}\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Webhook-Signature: {signature(body, HMAC_KEY)}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + "\r\n"
    )
    return head.encode() + body


def read_answer(sock: socket.socket, pending: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One answer off ``sock`` (what came with it beyond stays in ``pending``): the status
    line, the headers (names lower case) and the body."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {bytes(pending)!r}"
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        rest += chunk
    pending[:] = rest[length:]
    return status.encode(), headers, rest[:length]


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def rows(database_url: str, prefix: str) -> int:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            query = select(func.count()).where(Media.media_id.startswith(prefix))
            return int(session.exec(query).one())
    finally:
        engine.dispose()


def test_pipelined_webhooks_on_one_kept_connection_are_answered_in_order(
    address: tuple[str, int, list[str]], database_url: str
) -> None:
    host, port, below = address
    with socket.create_connection((host, port), timeout=30) as sock:
        pending = bytearray()
        # Three in one write: uvicorn holds the second and third until the first is answered.
        sock.sendall(request("pipe-1") + request("pipe-2") + request("pipe-1"))
        answers = [read_answer(sock, pending) for _ in range(3)]
        assert [a[0] for a in answers] == [
            b"HTTP/1.1 202 Accepted",
            b"HTTP/1.1 202 Accepted",
            b"HTTP/1.1 200 OK",
        ]
        assert [a[2] for a in answers] == [
            b'{"status":"queued","id":"pipe-1"}',
            b'{"status":"queued","id":"pipe-2"}',
            b'{"status":"duplicate","id":"pipe-1"}',
        ]
        for _, headers, _ in answers:
            assert headers["content-type"] == "application/json"
            assert headers["x-request-id"] and "date" in headers
            assert "connection" not in headers  # kept alive
        # The same connection serves a fourth, and a request that is not a webhook.
        sock.sendall(request("pipe-3"))
        assert read_answer(sock, pending)[0] == b"HTTP/1.1 202 Accepted"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, body = read_answer(sock, pending)
        assert status == b"HTTP/1.1 200 OK" and body
    assert below == ["acme"] * 4  # the webhooks, not the health check
    assert rows(database_url, "pipe-") == 3


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    address: tuple[str, int, list[str]],
) -> None:
    host, port, below = address
    whole = request("continue-1", expect=True)
    head, body = whole.split(b"\r\n\r\n", 1)
    with socket.create_connection((host, port), timeout=30) as sock:
        pending = bytearray()
        sock.sendall(head + b"\r\n\r\n")
        status, _, interim = read_answer(sock, pending)
        assert status == b"HTTP/1.1 100 Continue" and interim == b""
        sock.sendall(body)
        assert read_answer(sock, pending)[0] == b"HTTP/1.1 202 Accepted"
    assert below == ["acme"]


def test_http_1_0_is_answered_and_its_connection_closed(
    address: tuple[str, int, list[str]],
) -> None:
    host, port, below = address
    with socket.create_connection((host, port), timeout=30) as sock:
        pending = bytearray()
        sock.sendall(request("old-1", version="1.0"))
        status, headers, _ = read_answer(sock, pending)
        assert status == b"HTTP/1.1 202 Accepted"
        assert headers["connection"] == "close"
        assert closed(sock)
    assert below == ["acme"]


def test_a_client_gone_mid_body_is_not_recorded_and_the_next_is_served(
    address: tuple[str, int, list[str]], database_url: str
) -> None:
    host, port, below = address
    whole = request("gone-1")
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(whole[: len(whole) - 200])  # the headers and most of the body
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request("gone-2"))
        assert read_answer(sock, bytearray())[0] == b"HTTP/1.1 202 Accepted"
    assert rows(database_url, "gone-1") == 0
    assert rows(database_url, "gone-2") == 1
    assert below == ["acme", "acme"]


def test_a_body_over_the_limit_is_refused_and_the_connection_closed(
    address: tuple[str, int, list[str]],
) -> None:
    host, port, _ = address
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            b"POST /webhooks/acme HTTP/1.1\r\nHost: test\r\nContent-Length: 2000000\r\n"
            b"X-Webhook-Signature: sha256=00\r\n\r\n{"
        )
        status, headers, body = read_answer(sock, bytearray())
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
        assert headers["connection"] == "close"
        assert body == b'{"error":"body too large"}'
        assert closed(sock)
