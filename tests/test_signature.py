"""The webhook signature: HMAC-SHA256 over raw bytes, one error for every failure."""

import pytest

from archiver.errors import InvalidSignature
from receiver.signature import sign, verify

BODY = b'{"event":"message.received","payload":{"mediaId":"m1"}}'


def test_accepts_body_signed_with_the_key() -> None:
    verify(BODY, sign(BODY, "k1"), ["k1"])


def test_accepts_uppercase_hex_and_surrounding_space() -> None:
    header = sign(BODY, "k1")
    verify(BODY, "  sha256=" + header.removeprefix("sha256=").upper() + " ", ["k1"])


def test_accepts_either_key_during_rotation() -> None:
    verify(BODY, sign(BODY, "old"), ["new", "old"])
    verify(BODY, sign(BODY, "new"), ["new", "old"])


def test_rejects_body_signed_with_other_key() -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY, sign(BODY, "other"), ["k1"])


def test_rejects_a_changed_body() -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY + b" ", sign(BODY, "k1"), ["k1"])


def test_signs_raw_bytes_even_when_not_utf8() -> None:
    body = b"\xff\xfe\x00 not utf-8"
    verify(body, sign(body, "k1"), ["k1"])


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha1=" + "a" * 40, "sha256=" + "g" * 64, "sha256=" + "a" * 63, "a" * 64],
)
def test_rejects_missing_or_malformed_header(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY, header, ["k1"])


def test_rejects_when_tenant_has_no_keys() -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY, sign(BODY, "k1"), [])
