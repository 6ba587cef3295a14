"""The dashboard's sign-in: a signed, expiring session cookie and its CSRF token.

The cookie names who signed in (a tenant API key by its id, or the admin), never the key
itself; it is HMAC-signed with a key derived from the master key, HttpOnly, SameSite=Strict
and scoped to /ui. Every request re-checks that the API key is still unrevoked, so revoking
a key ends its dashboard sessions at once. State-changing forms carry the session's CSRF
token, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE = "archiver_ui"
PATH = "/ui"
_INFO = b"titan-archiver dashboard sessions v1"


@dataclass(frozen=True)
class UiSession:
    key_id: int | None  # the tenant API key signed in with; None for the admin
    admin_print: str | None  # the admin key's fingerprint: changing the key ends its sessions
    csrf: str
    expires: int  # Unix seconds

    @property
    def admin(self) -> bool:
        return self.key_id is None


def admin_fingerprint(admin_key: str) -> str:
    return hashlib.sha256(b"ui-admin:" + admin_key.encode()).hexdigest()[:32]


class SessionSigner:
    def __init__(self, master_key: str, *, ttl_seconds: int) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            master_key.encode()
        )
        self.ttl_seconds = ttl_seconds

    def new(self, *, key_id: int | None, admin_print: str | None) -> UiSession:
        return UiSession(
            key_id=key_id,
            admin_print=admin_print,
            csrf=secrets.token_urlsafe(24),
            expires=int(time.time()) + self.ttl_seconds,
        )

    def dump(self, session: UiSession) -> str:
        payload = (
            base64.urlsafe_b64encode(json.dumps(asdict(session), separators=(",", ":")).encode())
            .decode()
            .rstrip("=")
        )
        return f"{payload}.{self._sign(payload)}"

    def load(self, value: str | None) -> UiSession | None:
        """The session in a cookie value, or None if it is missing, forged or expired."""
        if not value or len(value) > 1024 or "." not in value:
            return None
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key_id = doc["key_id"]
            session = UiSession(
                key_id=key_id if isinstance(key_id, int) else None,
                admin_print=doc["admin_print"],
                csrf=str(doc["csrf"]),
                expires=int(doc["expires"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time():
            return None
        if key_id is not None and session.key_id is None:
            return None  # a key id that is not an integer: not a cookie we signed
        return session

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_ok(session: UiSession, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())
