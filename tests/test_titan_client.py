"""The Titan client over httpx.MockTransport: auth, redirects, error classes, deprecation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

from archiver.errors import PermanentError, TenantError, TransientError
from worker.titan_client import TitanClient, classify, parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]
BASE = "https://titan.example.com"


def client(handler: Handler) -> TitanClient:
    return TitanClient(
        base_url=BASE,
        api_key="titan_secret",
        timeout=httpx.Timeout(5),
        transport=httpx.MockTransport(handler),
    )


def info(**extra: object) -> dict[str, object]:
    return {"data": {"id": "m1", "persisted": True, "s3Url": "https://b.s3/x", **extra}}


def test_sends_bearer_key_and_escapes_path_segments() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=info())

    client(handler).get_media("sales", "a/b?c")
    assert seen[0].headers["Authorization"] == "Bearer titan_secret"
    assert seen[0].url.raw_path == b"/api/sessions/sales/media/a%2Fb%3Fc"


def test_download_streams_body_and_reports_length() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path.endswith("/download")
        return httpx.Response(200, content=b"x" * 1000, headers={"Content-Type": "image/jpeg"})

    with client(handler).download("s", "m1") as body:
        assert body.content_length == 1000
        assert body.content_type == "image/jpeg"
        assert b"".join(body.chunks) == b"x" * 1000


def test_follows_redirect_without_sending_the_key_to_another_host() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "titan.example.com":
            return httpx.Response(302, headers={"Location": "https://cdn.example.net/blob/1"})
        return httpx.Response(200, content=b"data")

    with client(handler).download("s", "m1") as body:
        assert b"".join(body.chunks) == b"data"
    assert "Authorization" in seen[0].headers
    assert seen[1].url.host == "cdn.example.net"
    assert "Authorization" not in seen[1].headers
    assert seen[1].method == "GET"


def test_keeps_the_key_on_a_same_origin_redirect() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/download"):
            return httpx.Response(307, headers={"Location": "/api/blob/1"})
        return httpx.Response(200, content=b"data")

    with client(handler).download("s", "m1") as body:
        assert b"".join(body.chunks) == b"data"
    assert seen[1].headers["Authorization"] == "Bearer titan_secret"
    assert seen[1].method == "POST"


def test_redirect_loop_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "/again"})

    with pytest.raises(TransientError, match="redirected"), client(handler).download("s", "m"):
        pass


def test_rate_limit_is_transient_and_carries_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "7"})

    with pytest.raises(TransientError) as caught:
        client(handler).persist("s", "m")
    assert caught.value.retry_after == 7
    assert "slow down" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_transient(status: int) -> None:
    with pytest.raises(TransientError):
        client(lambda r: httpx.Response(status, json={"error": "x"})).get_media("s", "m")


@pytest.mark.parametrize("status", [400, 404, 409])
def test_client_errors_about_the_media_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError, match=str(status)):
        client(lambda r: httpx.Response(status, json={"error": "nope"})).get_media("s", "m")


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_the_tenants_problem_not_the_medias(status: int) -> None:
    with pytest.raises(TenantError, match=str(status)):
        client(lambda r: httpx.Response(status, json={"error": "nope"})).get_media("s", "m")


def test_transport_failure_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientError, match="unreachable"):
        client(handler).get_media("s", "m")


def test_a_stream_that_breaks_midway_is_transient() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"abc"
            raise httpx.RemoteProtocolError("peer closed connection")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken(), headers={"Content-Length": "100"})

    with pytest.raises(TransientError, match="broke"), client(handler).download("s", "m") as body:
        b"".join(body.chunks)


def test_json_without_data_is_transient() -> None:
    with pytest.raises(TransientError):
        client(lambda r: httpx.Response(200, json={"nothing": 1})).get_media("s", "m")


def test_warns_once_per_client_on_deprecation_headers(caplog: pytest.LogCaptureFixture) -> None:
    c = client(lambda r: httpx.Response(200, json=info(), headers={"Deprecation": "true"}))
    with caplog.at_level(logging.WARNING, logger="worker.titan_client"):
        c.get_media("s", "m")
        c.get_media("s", "m")
    assert len([r for r in caplog.records if "deprecated" in r.getMessage()]) == 1


def test_parses_retry_after_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12") == 12
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=now) == 30
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_classify_keeps_the_message() -> None:
    error = classify(404, message="Media not found")
    assert isinstance(error, PermanentError) and "Media not found" in str(error)
