"""Sign and verify Titan webhook bodies: HMAC-SHA256 over the raw bytes, ``sha256=<hex>``."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

from archiver.errors import InvalidSignature

PREFIX = "sha256="
_HEX = re.compile(r"[0-9a-f]{64}")


def sign(body: bytes, key: str | bytes) -> str:
    """Return the ``X-Webhook-Signature`` value Titan would send for ``body``."""
    raw_key = key.encode() if isinstance(key, str) else key
    return PREFIX + _hexdigest(raw_key, body)


def _hexdigest(key: bytes, body: bytes) -> str:
    return hmac.digest(key, body, "sha256").hex()  # OpenSSL's one-shot HMAC


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
    if not _HEX.fullmatch(given):
        raise InvalidSignature("malformed signature")
    matched = False
    for key in keys:
        expected = _hexdigest(key.encode() if isinstance(key, str) else key, body)
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InvalidSignature("signature mismatch")
