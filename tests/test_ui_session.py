"""The dashboard's pure pieces: session cookies, CSRF tokens, content disposition, formatting."""

from __future__ import annotations

import time

from archiver.humanize import age as human_age
from archiver.humanize import size as human_bytes
from archiver.infra.buckets import content_disposition
from receiver.ui.session import SessionSigner, admin_fingerprint, csrf_ok

SIGNER = SessionSigner("a-long-master-key-for-tests", ttl_seconds=60)


def test_a_session_round_trips_and_names_the_key_by_id_only() -> None:
    session = SIGNER.new(key_id=7, admin_print=None)
    value = SIGNER.dump(session)
    assert SIGNER.load(value) == session
    assert "=" not in value and not session.admin


def test_tampered_foreign_or_expired_cookies_are_refused() -> None:
    value = SIGNER.dump(SIGNER.new(key_id=7, admin_print=None))
    payload, _, signature = value.rpartition(".")
    forged = SIGNER.dump(SIGNER.new(key_id=8, admin_print=None)).rpartition(".")[0]
    assert SIGNER.load(f"{forged}.{signature}") is None  # another payload, this signature
    flipped = "y" if signature[0] == "x" else "x"  # a changed first character, never the same
    assert SIGNER.load(f"{payload}.{flipped}{signature[1:]}") is None
    other = SessionSigner("another-long-master-key", ttl_seconds=60)
    assert other.load(value) is None  # a different master key signs differently
    expired = SessionSigner("a-long-master-key-for-tests", ttl_seconds=-1)
    assert expired.load(expired.dump(expired.new(key_id=7, admin_print=None))) is None
    for junk in (None, "", ".", "a.b", "x" * 5000, "e30.AAAA"):
        assert SIGNER.load(junk) is None


def test_csrf_tokens_compare_exactly() -> None:
    session = SIGNER.new(key_id=None, admin_print=admin_fingerprint("admin-key"))
    assert session.admin and csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf[:-1])
    assert session.expires > time.time()
    assert admin_fingerprint("admin-key") != admin_fingerprint("admin-key2")


def test_only_plain_media_is_served_inline() -> None:
    assert content_disposition("image/jpeg", "a.jpg") == 'inline; filename="a.jpg"'
    assert content_disposition("VIDEO/MP4", "v.mp4").startswith("inline")
    for risky in ("text/html", "image/svg+xml", "application/pdf", None, "application/x-sh"):
        assert content_disposition(risky, "f").startswith("attachment")
    assert content_disposition("image/png", 'evil"; x=1\r\n.png') == (
        'inline; filename="evil___x_1__.png"'
    )


def test_sizes_and_ages_read_like_a_person_would_say_them() -> None:
    assert [human_bytes(n) for n in (None, 0, 1023, 1536, 5 * 1024**3)] == [
        "\u2013",
        "0 B",
        "1023 B",
        "1.5 KB",
        "5.0 GB",
    ]
    assert [human_age(s) for s in (None, 30, 600, 7200 * 3, 86400 * 5)] == [
        "\u2013",
        "30 s",
        "10 min",
        "6.0 h",
        "5.0 days",
    ]
