"""Titan's webhooks API: register the archiver's webhook for a tenant (``tenants connect``)
and verify it is still there, enabled and pointing here (``tenants check``).

``POST /api/webhooks`` ``{url, events, hmacKey, session?}`` creates one, ``GET /api/webhooks``
lists them, ``PATCH /api/webhooks/{id}`` changes one, ``DELETE /api/webhooks/{id}`` removes
it; answers are ``{"data": ...}``, errors ``{"error": ...}`` (shared/titan-api.md, section 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from archiver.errors import AppError, ConfigError, TenantError, Unavailable
from archiver.media.capture import CapturePolicy

# What the archiver acts on whatever the policy: media, revocations (erasure of revoked
# media), and session status (a logged-out session's media waits instead of failing).
BASE_EVENTS = (
    "message.received",
    "message.revoked",
    "message.delete",
    "session.status",
    "session.logged_out",
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def events_for(policy: CapturePolicy) -> list[str]:
    """The events a tenant's capture policy needs Titan to send."""
    return sorted({*BASE_EVENTS, *(["message.sent"] if policy.outgoing else [])})


def webhook_url(public_url: str, tenant: str) -> str:
    """Where Titan posts a tenant's deliveries: ``{public URL}/webhooks/{tenant}``.

    The public URL must be https (Titan posts signed bodies with customer data), except on
    a loopback address for local tests; a ConfigError says what is wrong with it."""
    parts = urlsplit(public_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"--public-url must be an https:// URL, e.g. https://archiver.example.com "
            f"(got {public_url!r})"
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise ConfigError("--public-url must be https:// (plain http only on a loopback address)")
    if parts.query or parts.fragment:
        raise ConfigError("--public-url must not carry a query or a fragment")
    return f"{public_url.rstrip('/')}/webhooks/{quote(tenant, safe='')}"


@dataclass(frozen=True)
class Webhook:
    """A webhook as Titan reports it."""

    id: str
    url: str
    events: tuple[str, ...]
    session: str | None
    enabled: bool

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Webhook:
        return cls(
            id=str(doc.get("id", "")),
            url=str(doc.get("url", "")),
            events=tuple(str(e) for e in doc.get("events") or ()),
            session=doc.get("session"),
            enabled=bool(doc.get("enabled", True)),
        )

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "session": self.session,
            "enabled": self.enabled,
        }


class TitanWebhooks:
    """A tenant's webhooks at Titan, with its server API key and explicit timeouts."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TitanWebhooks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            answer = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Titan unreachable: {type(exc).__name__}: {exc}") from exc
        if answer.status_code in (401, 403):
            raise TenantError(
                f"Titan refused the API key ({answer.status_code}): it is wrong, expired, "
                "or lacks the webhooks scope"
            )
        if not answer.is_success:
            raise AppError(f"Titan answered {answer.status_code}: {_message(answer)}")
        try:
            return answer.json().get("data") if answer.content else None
        except (ValueError, AttributeError) as exc:
            raise AppError("Titan's answer is not the JSON it documents") from exc

    def all(self) -> list[Webhook]:
        data = self._call("GET", "/api/webhooks")
        return [Webhook.of(doc) for doc in data or [] if isinstance(doc, dict)]

    def create(self, *, url: str, events: list[str], hmac_key: str, session: str | None) -> Webhook:
        body: dict[str, Any] = {"url": url, "events": events, "hmacKey": hmac_key}
        if session:
            body["session"] = session
        return Webhook.of(self._call("POST", "/api/webhooks", body))

    def update(self, webhook_id: str, changes: dict[str, Any]) -> Webhook:
        return Webhook.of(self._call("PATCH", f"/api/webhooks/{quote(webhook_id)}", changes))


def connect(
    titan: TitanWebhooks, *, url: str, events: list[str], hmac_key: str, session: str | None
) -> Webhook:
    """Make Titan post ``events`` to ``url`` signed with ``hmac_key``: the webhook already
    pointing there is updated (so running it twice never registers two), else one is made."""
    for webhook in titan.all():
        if webhook.url == url:
            changes: dict[str, Any] = {
                "events": events,
                "hmacKey": hmac_key,
                "enabled": True,
                "session": session,
            }
            return titan.update(webhook.id, changes)
    return titan.create(url=url, events=events, hmac_key=hmac_key, session=session)


def verify(titan: TitanWebhooks, *, webhook_id: str | None, url: str, events: list[str]) -> str:
    """Why the tenant's webhook at Titan will not deliver here, or "" when it will: it must
    exist, be enabled, point at ``url`` and send every event in ``events``."""
    found = {w.id: w for w in titan.all()}
    webhook = found.get(webhook_id or "") or next((w for w in found.values() if w.url == url), None)
    if webhook is None:
        return f"no webhook at Titan posts to {url}: run `titan-archiver tenants connect`"
    if not webhook.enabled:
        return f"Titan's webhook {webhook.id} is disabled: run `titan-archiver tenants connect`"
    if webhook.url != url:
        return f"Titan's webhook {webhook.id} posts to {webhook.url}, not to {url}"
    missing = sorted(set(events) - set(webhook.events))
    if missing:
        return f"Titan's webhook {webhook.id} does not send {', '.join(missing)}"
    return ""


def _message(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("error") or answer.reason_phrase)[:200]
    except (ValueError, AttributeError):
        return answer.reason_phrase
