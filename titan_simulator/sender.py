"""Send signed ``message.received`` webhooks the way Titan does, for media the simulator holds."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

MIME_BY_TYPE = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "document": "application/pdf",
    "sticker": "image/webp",
}


@dataclass(frozen=True)
class SentMedia:
    media_id: str
    message_id: str
    session: str
    message_type: str
    mime_type: str
    size: int
    sha256: str
    envelope: dict[str, Any]


def media_envelope(
    *,
    media_id: str | int,  # Titan sends strings; hostile-input tests send numbers too
    message_id: str,
    session: str,
    message_type: str,
    mime_type: str,
    size: int,
    sender: str = "+5511999999999",
    caption: str | None = None,
    media_url: str | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    payload: dict[str, Any] = {
        "id": message_id,
        "from": {"phoneNumber": sender, "lid": "1234@lid", "mode": "pn"},
        "type": message_type,
        "timestamp": int(now.timestamp()),
        "fromMe": False,
        "pushName": "Maria",
        "isGroup": False,
        "mediaId": media_id,
        "mimeType": mime_type,
        "fileLength": size,
    }
    if caption:
        payload |= {"caption": caption, "body": caption, "text": caption}
    if media_url:
        payload["mediaUrl"] = media_url
    return {
        "id": "evt_" + secrets.token_hex(6),
        "event": "message.received",
        "session": session,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "payload": payload,
    }


def signature(body: bytes, hmac_key: str) -> str:
    """Titan's X-Webhook-Signature, computed here independently of the archiver's verifier."""
    return "sha256=" + hmac.new(hmac_key.encode(), body, hashlib.sha256).hexdigest()


def post_signed(
    client: httpx.Client, url: str, hmac_key: str, envelope: dict[str, Any]
) -> httpx.Response:
    body = json.dumps(envelope, separators=(",", ":")).encode()
    return client.post(
        url,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Webhook-Signature": signature(body, hmac_key),
        },
    )


class Simulator:
    """A client for the simulator's control routes."""

    def __init__(self, base_url: str, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=120)

    def close(self) -> None:
        self._client.close()

    def add_account(self, *, api_key: str, account: str, s3: dict[str, Any] | None = None) -> None:
        self._post("/_sim/accounts", {"apiKey": api_key, "account": account, "s3": s3})

    def deliver(self, *, account: str, envelope: dict[str, Any]) -> list[dict[str, Any]]:
        """Have the simulator post ``envelope`` to the account's registered webhooks, signed
        with each one's key, as Titan does; each webhook's answer."""
        found = self._post("/_sim/deliver", {"account": account, "envelope": envelope})["data"]
        return list(found)

    def set_faults(self, **faults: Any) -> None:
        self._post("/_sim/faults", faults)

    def stats(self) -> dict[str, int]:
        answer = self._client.get(self.base_url + "/_sim/stats")
        answer.raise_for_status()
        return dict(answer.json())

    def make_media(
        self,
        *,
        account: str,
        message_type: str,
        size: int,
        session: str = "default",
        mime_type: str | None = None,
        gone: bool = False,
        sample: bool = False,
        media_id: str | None = None,
        sender: str = "+5511999999999",
        filename: str | None = None,
        caption: str | None = "",
    ) -> SentMedia:
        """Register media with the simulator and build the webhook that announces it.

        ``sample=True`` serves the real sample file for ``message_type`` (its own size and
        MIME type) instead of ``size`` bytes of noise; ``media_id`` re-registers an id (for
        instance to bring back media registered as gone). ``caption``: "" for a made-up one
        ("image of 13006 bytes"), None for none (as most WhatsApp media arrive).
        """
        mime = mime_type or MIME_BY_TYPE.get(message_type, "application/octet-stream")
        spec: dict[str, Any] = {
            "account": account,
            "session": session,
            "mimeType": mime,
            "size": size,
            "gone": gone,
        }
        if sample:
            spec["sample"] = message_type
        if media_id:
            spec["mediaId"] = media_id
        info = self._post("/_sim/media", spec)["data"][0]
        mime, size = info["mimeType"], info["fileLength"]
        envelope = media_envelope(
            media_id=info["id"],
            message_id=info["messageId"],
            session=session,
            message_type=message_type,
            mime_type=mime,
            size=size,
            sender=sender,
            caption=f"{message_type} of {size} bytes" if caption == "" else caption,
        )
        if filename:
            envelope["payload"]["filename"] = filename
        return SentMedia(
            media_id=info["id"],
            message_id=info["messageId"],
            session=session,
            message_type=message_type,
            mime_type=mime,
            size=size,
            sha256=info["sha256"],
            envelope=envelope,
        )

    def _post(self, path: str, doc: Any) -> dict[str, Any]:
        answer = self._client.post(self.base_url + path, json=doc)
        answer.raise_for_status()
        return dict(answer.json())
