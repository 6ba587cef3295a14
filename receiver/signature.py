"""Sign and verify Titan webhook bodies: HMAC-SHA256 over the raw bytes, ``sha256=<hex>``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from archiver.errors import InvalidSignature

PREFIX = "sha256="
_HEX_LEN = 64


def sign(body: bytes, key: str | bytes) -> str:
    """Return the ``X-Webhook-Signature`` value Titan would send for ``body``."""
    raw_key = key.encode() if isinstance(key, str) else key
    return PREFIX + hmac.new(raw_key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, keys: Iterable[str | bytes]) -> None:
    """Raise InvalidSignature unless ``header`` signs ``body`` with one of ``keys``.

    Several keys are accepted so a tenant can rotate its webhook key. Every key is
    compared (no early exit) so timing does not tell which one matched.
    """
    if not header:
        raise InvalidSignature("missing signature")
    header = header.strip()
    if not header.startswith(PREFIX):
        raise InvalidSignature("malformed signature")
    given = header[len(PREFIX) :].lower()
    if len(given) != _HEX_LEN or any(c not in "0123456789abcdef" for c in given):
        raise InvalidSignature("malformed signature")
    matched = False
    for key in keys:
        expected = sign(body, key)[len(PREFIX) :]
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InvalidSignature("signature mismatch")
