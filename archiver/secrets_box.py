"""Encrypt tenant secrets at rest with the master key (authenticated encryption, Fernet)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archiver.errors import ConfigError

_INFO = b"titan-archiver tenant secrets v1"


def _fernet(master_key: str) -> Fernet:
    # Any long random string is accepted as the master key; HKDF turns it into a Fernet key.
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        master_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(raw))


class SecretBox:
    """Encrypts with the current master key; decrypts with it or any older key."""

    def __init__(self, current: str, older: Sequence[str] = ()) -> None:
        self._current = _fernet(current)
        self._box = MultiFernet([self._current, *(_fernet(k) for k in older)])

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is encrypted under the current key (no older key needed)."""
        try:
            self._current.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def encrypt(self, plaintext: str) -> str:
        return self._box.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._box.decrypt(token.encode("ascii")).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored secret cannot be decrypted: ARCHIVER_SECRET_KEY is not the key it was "
                "encrypted with"
            ) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the current key."""
        try:
            return self._box.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise ConfigError("a stored secret cannot be decrypted with any known key") from exc
