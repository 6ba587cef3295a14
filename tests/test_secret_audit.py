"""The secret audit itself can fail: it finds a planted secret, and it collects secrets and
answers where they enter the product."""

from __future__ import annotations

import httpx

from archiver.secrets_box import SecretBox
from tests.secret_audit import Audit, find_leaks


def test_finds_a_planted_secret_and_ignores_short_values() -> None:
    sources = [("worker.log", "ok\nkey=hunter2-long-secret\n"), ("answer", '{"data": []}')]
    assert find_leaks({"hunter2-long-secret", "testing"}, sources) == [
        ("worker.log", "hunt…(19 chars)")
    ]
    assert find_leaks({"testing"}, [("log", "testing testing")]) == []


def test_collects_secrets_as_they_are_encrypted_and_answers_as_they_arrive() -> None:
    audit = Audit()
    audit.install()
    try:
        SecretBox("a-long-master-key-for-tests").encrypt("tenant-hmac-key-to-watch")
        transport = httpx.MockTransport(
            lambda request: httpx.Response(200, json={"echo": "tenant-hmac-key-to-watch"})
        )
        with httpx.Client(transport=transport) as client:
            client.get("http://receiver.test/api/media")
    finally:
        audit.uninstall()
        # The suite's own audit saw this planted leak too; it is not one of the product's.
        from tests.conftest import AUDIT

        AUDIT.secrets.discard("tenant-hmac-key-to-watch")
    assert "tenant-hmac-key-to-watch" in audit.secrets
    assert [where for where, _ in audit.leaks()] == ["GET http://receiver.test/api/media"]
