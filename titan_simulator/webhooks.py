"""The simulator's webhooks API (create, list, update, delete) and its deliveries: an event
posted to every enabled webhook of the account that asked for it, signed with that webhook's
``hmacKey`` the way Titan signs (shared/titan-api.md, section 2)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

EVENT_TYPES = frozenset(
    {
        "message.received",
        "message.sent",
        "message.ack",
        "message.revoked",
        "message.delete",
        "message.edited",
        "session.status",
        "session.logged_out",
        "group.update",
        "call.received",
        "command.result",
    }
)


@dataclass
class WebhookRecord:
    id: str
    account: str
    url: str
    events: list[str]
    hmac_key: str
    session: str | None = None
    enabled: bool = True
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z")
    )

    def public(self) -> dict[str, Any]:
        """As the API shows it: the key is never echoed back."""
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "session": self.session,
            "enabled": self.enabled,
            "createdAt": self.created_at,
        }

    def wants(self, envelope: dict[str, Any]) -> bool:
        if not self.enabled or envelope.get("event") not in self.events:
            return False
        return self.session is None or envelope.get("session") == self.session


def validate(doc: Any, *, partial: bool) -> str | None:
    """Why a create (or, ``partial``, an update) body is refused; None when it is fine."""
    if not isinstance(doc, dict):
        return "body must be a JSON object"
    if not partial or "url" in doc:
        url = doc.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return "url must be an http(s) URL"
    if not partial or "events" in doc:
        events = doc.get("events")
        if not isinstance(events, list) or not events:
            return "events must be a non-empty list"
        unknown = sorted(set(map(str, events)) - EVENT_TYPES)
        if unknown:
            return f"unknown events: {', '.join(unknown)}"
    if "hmacKey" in doc and (not isinstance(doc["hmacKey"], str) or len(doc["hmacKey"]) < 8):
        return "hmacKey must be a string of 8 or more characters"
    if "session" in doc and doc["session"] is not None and not isinstance(doc["session"], str):
        return "session must be a string or null"
    if "enabled" in doc and not isinstance(doc["enabled"], bool):
        return "enabled must be a boolean"
    return None


def create(account: str, doc: dict[str, Any]) -> WebhookRecord:
    return WebhookRecord(
        id="wh_" + secrets.token_hex(8),
        account=account,
        url=doc["url"],
        events=[str(e) for e in doc["events"]],
        hmac_key=doc.get("hmacKey") or secrets.token_urlsafe(24),
        session=doc.get("session"),
    )


def update(record: WebhookRecord, doc: dict[str, Any]) -> None:
    if "url" in doc:
        record.url = doc["url"]
    if "events" in doc:
        record.events = [str(e) for e in doc["events"]]
    if "hmacKey" in doc:
        record.hmac_key = doc["hmacKey"]
    if "session" in doc:
        record.session = doc["session"]
    if "enabled" in doc:
        record.enabled = doc["enabled"]


async def deliver(
    client: httpx.AsyncClient, records: list[WebhookRecord], envelope: dict[str, Any]
) -> list[dict[str, Any]]:
    """Post ``envelope`` to each webhook that wants it; each one's answer (or error)."""
    body = json.dumps(envelope, separators=(",", ":")).encode()
    results = []
    for record in records:
        if not record.wants(envelope):
            continue
        digest = hmac.new(record.hmac_key.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Webhook-Signature": f"sha256={digest}"}
        try:
            answer = await client.post(record.url, content=body, headers=headers)
            results.append({"webhook": record.id, "status": answer.status_code})
        except httpx.HTTPError as exc:
            results.append({"webhook": record.id, "status": None, "error": type(exc).__name__})
    return results
