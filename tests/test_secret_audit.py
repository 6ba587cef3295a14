"""The secret audit itself can fail: it finds a planted secret, and it collects secrets and
answers where they enter the product."""

from __future__ import annotations

import httpx

from archiver.secrets_box import SecretBox
from tests.secret_audit import Audit, find_leaks, total


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


def test_the_audits_of_parallel_test_processes_add_up_with_each_secret_counted_once() -> None:
    first, second = Audit(), Audit()
    first.add_secret("shared-master-key-of-tests")
    second.add_secret("shared-master-key-of-tests")
    second.add_secret("tenant-hmac-key-planted")
    first.record_answer("GET /a", "{}")
    second.record_answer("GET /b", '{"key": "tenant-hmac-key-planted"}')
    second.captured.append(("test_x (Captured stdout call)", "nothing"))
    figures = total([first.figures(), second.figures()])
    assert (figures["secrets"], figures["answers"], figures["captured"]) == (2, 2, 1)
    assert figures["processes"] == 2
    assert figures["leaks"] == [("GET /b", "tena…(23 chars)")]
    assert "tenant-hmac-key-planted" not in repr(first.figures()) + repr(second.figures())
