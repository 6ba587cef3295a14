"""The Titan media API client: Bearer auth, explicit timeouts, redirects that keep the key home.

Status answers are classified here (pure ``classify``): 429, 408 and 5xx are transient
(honouring Retry-After), any other 4xx is permanent. Transport failures are transient.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from archiver.errors import AppError, PermanentError, TenantError, TransientError

log = logging.getLogger(__name__)

DEPRECATION_HEADERS = ("Deprecation", "Sunset", "Titan-SDK-Deprecation")
MAX_REDIRECTS = 5
_CHUNK = 256 * 1024


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), if usable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify(status: int, *, message: str, retry_after: str | None = None) -> AppError:
    """The error a non-success Titan answer stands for."""
    text = f"titan answered {status}: {message}" if message else f"titan answered {status}"
    if status == 429 or status == 408 or status >= 500:
        return TransientError(
            text, retry_after=parse_retry_after(retry_after), rate_limited=status == 429
        )
    if status in (401, 403):
        # The key is wrong, expired, disabled or under-scoped: the tenant's, not the media's.
        return TenantError(text)
    return PermanentError(text)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error[:300]
    return response.reason_phrase


@dataclass
class Download:
    """A streaming media body; ``chunks`` raises TransientError if the stream breaks."""

    content_length: int | None
    content_type: str | None
    chunks: Iterator[bytes]


class TitanClient:
    """One Titan account's API, for one worker process."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: httpx.Timeout,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._api_key = api_key
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )
        self._warned = False
        # Titan's last answer said X-RateLimit-Remaining: 0 (archiver/scheduling/fairness.py
        # holds the tenant for a moment then).
        self.exhausted = False

    def close(self) -> None:
        self._client.close()

    def get_media(self, session: str, media_id: str) -> dict[str, Any]:
        return self._json("GET", self._path(session, media_id))

    def persist(self, session: str, media_id: str) -> dict[str, Any]:
        return self._json("POST", self._path(session, media_id, "persist"))

    @contextmanager
    def download(self, session: str, media_id: str) -> Iterator[Download]:
        response = self._send("POST", self._path(session, media_id, "download"))
        try:
            self._check(response)
            length = response.headers.get("Content-Length")
            yield Download(
                content_length=int(length) if length and length.isdigit() else None,
                content_type=response.headers.get("Content-Type"),
                chunks=self._chunks(response),
            )
        finally:
            response.close()

    # -- internals -----------------------------------------------------------------------

    def _path(self, session: str, media_id: str, action: str | None = None) -> httpx.URL:
        path = f"api/sessions/{quote(session, safe='')}/media/{quote(media_id, safe='')}"
        return self._base.join(path + (f"/{action}" if action else ""))

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == (
            self._base.scheme,
            self._base.host,
            self._base.port,
        )

    def _send(self, method: str, url: httpx.URL) -> httpx.Response:
        """Send with manual redirects: the API key never leaves Titan's own origin."""
        for _ in range(MAX_REDIRECTS + 1):
            # identity: the bytes we count and hash must be the file itself, not a gzip of it.
            headers = {"Accept": "application/json, */*", "Accept-Encoding": "identity"}
            if self._same_origin(url):
                headers["Authorization"] = f"Bearer {self._api_key}"
            try:
                response = self._client.send(
                    self._client.build_request(method, url, headers=headers), stream=True
                )
            except httpx.TransportError as exc:
                raise TransientError(f"titan unreachable: {type(exc).__name__}") from exc
            self._warn_if_deprecated(response)
            self._note_rate_limit(response)
            if not response.is_redirect:
                return response
            location = response.headers.get("Location", "")
            response.close()
            url = url.join(location)
            if response.status_code in (301, 302, 303):
                method = "GET"
        raise TransientError("titan redirected too many times")

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        with suppress(httpx.HTTPError):
            response.read()
        raise classify(
            response.status_code,
            message=_error_message(response),
            retry_after=response.headers.get("Retry-After"),
        )

    def _json(self, method: str, url: httpx.URL) -> dict[str, Any]:
        response = self._send(method, url)
        try:
            self._check(response)
            try:
                response.read()
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise TransientError("titan sent an unreadable JSON body") from exc
        finally:
            response.close()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise TransientError("titan answer has no data object")
        return data

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as exc:
            raise TransientError(f"media stream broke: {type(exc).__name__}") from exc

    def _note_rate_limit(self, response: httpx.Response) -> None:
        """Remember whether Titan said this key has no requests left in its window."""
        remaining = response.headers.get("X-RateLimit-Remaining", "")
        if remaining.strip().isdigit():
            self.exhausted = int(remaining) == 0

    def _warn_if_deprecated(self, response: httpx.Response) -> None:
        if self._warned:
            return
        found = {h: response.headers[h] for h in DEPRECATION_HEADERS if h in response.headers}
        if found:
            self._warned = True
            log.warning("titan reports a deprecated API in use: %s", found)
