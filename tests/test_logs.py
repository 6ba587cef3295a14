"""Logs: one JSON object per event line, and no secret or signature ever written."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from archiver.infra import logs
from archiver.infra.logs import JsonFormatter, RedactingFilter, _Handler, redact, request_id
from devstack import processes
from devstack.fixtures import MASTER_KEY, process_env
from tests.conftest import migrated_database
from tests.test_receiver import add_tenant, media_body
from titan_simulator.sender import signature


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer tak_abcdefghijklmnop", "tak_abcdefghijklmnop"),
        ("calling with titan_0123456789abcdef", "titan_0123456789abcdef"),
        ("header X-Webhook-Signature: sha256=" + "ab" * 32, "ab" * 32),
        ("https://b.s3/k?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeefcafe", "deadbeefcafe"),
        ("{'hmac_key': 'supersecretvalue'}", "supersecretvalue"),
        ("aws_secret_access_key=wJalrXUtnFEMI", "wJalrXUtnFEMI"),
    ],
)
def test_redact_masks_keys_tokens_and_signatures(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_json_lines_carry_event_fields_and_redacted_exceptions() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "webhook %s", ("queued",), None)
    record.tenant, record.mediaId, record.outcome = "acme", "m1", "queued"
    RedactingFilter().filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "webhook queued" and doc["tenant"] == "acme" and doc["mediaId"] == "m1"
    try:
        raise RuntimeError("boom with Bearer tak_abcdefghijklmnop")
    except RuntimeError:
        import sys

        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter().filter(failing)
    line = JsonFormatter().format(failing)
    assert "tak_abcdefghijklmnop" not in line and "RuntimeError" in json.loads(line)["error"]


def test_receiver_process_logs_json_events_without_secrets(
    tmp_path: Path, redis_url: str, pg_admin_url: str | None
) -> None:
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        api_key = add_tenant(database_url, "acme", "acme-hmac-secret-key")
        port = processes.free_port()
        env = process_env(database_url, redis_url, ARCHIVER_LOG_FORMAT="json")
        proc = processes.start_process(
            "logs-receiver", processes.uvicorn_argv("receiver.app:create_app", port), env
        )
        try:
            url = f"http://127.0.0.1:{port}"
            processes.wait_until(lambda: processes.http_up(url + "/healthz"), timeout=30)
            body = media_body("logged-1")
            sig = signature(body, "acme-hmac-secret-key")
            assert (
                httpx.post(
                    f"{url}/webhooks/acme", content=body, headers={"X-Webhook-Signature": sig}
                ).status_code
                == 202
            )
            assert (
                httpx.post(
                    f"{url}/webhooks/acme",
                    content=body,
                    headers={"X-Webhook-Signature": "sha256=" + "1" * 64},
                ).status_code
                == 401
            )
            assert (
                httpx.get(
                    f"{url}/api/media", headers={"Authorization": f"Bearer {api_key}"}
                ).status_code
                == 200
            )
        finally:
            proc.stop()
        log = proc.log()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    queued = [e for e in events if e.get("outcome") == "queued"]
    assert queued and queued[0]["tenant"] == "acme" and queued[0]["mediaId"] == "logged-1"
    assert any(e.get("outcome") == "unauthorized" for e in events)
    for secret in (api_key, "acme-hmac-secret-key", MASTER_KEY, sig.removeprefix("sha256=")):
        assert secret not in log


def test_every_line_of_the_web_process_is_redacted_json_with_its_extra_fields(
    tmp_path: Path, redis_url: str
) -> None:
    """As the Procfile runs it (its web line: uvicorn's access log off, ours on, log level
    info): uvicorn's own lines are JSON too, our access lines carry method/path/status and
    the request id, and the dashboard sign-in's extra fields (admin, keyId) reach the log;
    nothing secret does."""
    admin = "logs-admin-key-" + "c" * 20
    with migrated_database("sqlite", tmp_path, None) as database_url:
        api_key = add_tenant(database_url, "acme", "acme-hmac-secret-key")
        port = processes.free_port()
        env = process_env(
            database_url, redis_url, ARCHIVER_LOG_FORMAT="json", ARCHIVER_ADMIN_API_KEY=admin
        )
        proc = processes.start_process("logs-access", processes.procfile_web_argv(port), env)
        try:
            url = f"http://127.0.0.1:{port}"
            processes.wait_until(lambda: processes.http_up(url + "/healthz"), timeout=30)
            with httpx.Client(base_url=url) as client:
                traced = client.get("/healthz", headers={"X-Request-ID": "req-from-the-lb-42"})
                assert traced.headers["x-request-id"] == "req-from-the-lb-42"
                made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith tab"})
                assert made.headers["x-request-id"] != "bad id\twith tab"
                assert client.post("/ui/login", data={"key": api_key}).status_code == 303
                assert client.post("/ui/login", data={"key": admin}).status_code == 303
                assert client.get(f"/api/media?tenant=acme&x={api_key}").status_code in (400, 401)
                assert client.get("/webhooks/acme").status_code == 405
        finally:
            proc.stop()
        log = proc.log()
    lines = [line for line in log.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line parses: no plain text
    assert not [e for e in events if e["logger"] == "uvicorn.access"]
    access = [e for e in events if e["logger"] == "receiver.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("POST", "/ui/login", 303),
        ("GET", "/healthz", 200),
        ("GET", "/webhooks/acme", 405),  # no webhook outcome line for it: an access line
    }
    assert all(e["client"].startswith("127.0.0.1:") and e["durationMs"] >= 0 for e in access)
    assert any(e["logger"].startswith("uvicorn") and "startup" in e["msg"] for e in events)
    assert any(e.get("request_id") == "req-from-the-lb-42" for e in access)
    sign_ins = [e for e in events if e.get("outcome") == "signed_in"]
    # Each sign-in line carries the id of its request, the same as that request's access line.
    for sign_in in sign_ins:
        assert any(
            e["request_id"] == sign_in["request_id"] and e["path"] == "/ui/login" for e in access
        )
    assert [(e["admin"], e.get("keyId") is not None) for e in sign_ins] == [
        (False, True),
        (True, False),
    ]
    for secret in (api_key, admin, MASTER_KEY, "acme-hmac-secret-key"):
        assert secret not in log


class _Writes(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(stream: _Writes) -> logging.Logger:
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.coalesced.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def test_lines_written_in_one_turn_of_the_loop_go_out_in_one_write() -> None:
    stream = _Writes()
    logger = _logger(stream)

    async def serve() -> tuple[str, int]:
        for n in range(5):
            logger.info("webhook %d", n)
        during = stream.getvalue()
        await asyncio.sleep(0)  # the turn ends: the lines go out
        return during, stream.writes

    during, writes = asyncio.run(serve())
    assert during == "" and writes == 1
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        f"webhook {n}" for n in range(5)
    ]


def test_without_a_loop_each_line_is_written_at_once_and_a_new_loop_flushes_its_own() -> None:
    stream = _Writes()
    logger = _logger(stream)
    logger.info("from a thread or the CLI")
    assert json.loads(stream.getvalue())["msg"] == "from a thread or the CLI"

    async def log_only() -> None:
        logger.info("in loop one")

    for _ in range(2):  # each loop flushes its own lines, whatever the loop before left
        asyncio.run(log_only())
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines[1:]] == ["in loop one"] * 2


class JsonRoot:
    """The root logger as configure_logging leaves it in production: our JSON handler
    alone, on a stream the test reads."""

    def __init__(self) -> None:
        self.stream = _Writes()
        self.handler = _Handler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(RedactingFilter(message=False))

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Our handler the root's only one, as in production: pytest adds its capturing
        handlers when the test starts, which sends ``event`` logging's way."""
        root = logging.getLogger()
        kept = root.handlers
        root.handlers = [self.handler]
        try:
            yield
        finally:
            root.handlers = kept


@pytest.fixture
def json_root(monkeypatch: pytest.MonkeyPatch) -> JsonRoot:
    ours = JsonRoot()
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)
    monkeypatch.setattr(logs, "_json_handler", ours.handler)
    return ours


FIELDS = {"tenant": "acme", "mediaId": "m1", "eventId": None, "outcome": "queued", "ms": 1.5}


def _without_ts(text: str) -> list[dict[str, object]]:
    docs = [json.loads(line) for line in text.splitlines()]
    for doc in docs:
        assert doc.pop("ts")
    return docs


def test_an_event_line_is_the_line_logging_writes(json_root: JsonRoot) -> None:
    logger = logging.getLogger("test.event.same")
    msg = "webhook queued with sha256=" + "ab" * 20  # redacted either way

    async def both() -> None:
        token = request_id.set("rid-1")
        try:
            assert logs._only_ours(logger, logging.INFO) is json_root.handler  # event's way
            logs.event(logger, logging.INFO, msg, FIELDS)
            logger.info(msg, extra=FIELDS)
            logs.event(logger, logging.DEBUG, "below the level", FIELDS)
        finally:
            request_id.reset(token)

    with json_root.alone():
        asyncio.run(both())
    written = json_root.stream.getvalue()
    fast, slow = _without_ts(written)
    assert fast == slow
    assert list(fast) == list(slow)  # the same key order too
    assert fast["request_id"] == "rid-1" and fast["mediaId"] == "m1" and "eventId" not in fast
    assert "ab" * 20 not in written
    assert json_root.stream.writes == 1  # one turn of the loop, one write


def test_an_event_line_in_a_forked_child_names_the_child(json_root: JsonRoot) -> None:
    """``event`` keeps the process id; a fork (Celery's pool) must renew it."""
    logger = logging.getLogger("test.event.fork")
    read, write = os.pipe()
    with json_root.alone():
        assert logs._only_ours(logger, logging.INFO) is json_root.handler  # event's way
        child = os.fork()
        if child == 0:  # the child: its line's pid, down the pipe
            try:
                logs.event(logger, logging.INFO, "from the child", {})
                line = json_root.stream.getvalue()
                os.write(write, str(json.loads(line)["pid"]).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            written = pipe.read()
        os.waitpid(child, 0)
        logs.event(logger, logging.INFO, "from the parent", {})
    assert written == str(child)
    assert json.loads(json_root.stream.getvalue())["pid"] == os.getpid()


def test_an_event_takes_loggings_way_when_another_handler_would_see_it(
    json_root: JsonRoot,
) -> None:
    logger = logging.getLogger("test.event.other")
    other = _Writes()
    extra_handler = logging.StreamHandler(other)
    logger.addHandler(extra_handler)
    try:
        with json_root.alone():
            assert logs._only_ours(logger, logging.WARNING) is None
            logs.event(logger, logging.WARNING, "seen twice", FIELDS)
    finally:
        logger.removeHandler(extra_handler)
    assert other.getvalue() == "seen twice\n"
    assert json.loads(json_root.stream.getvalue())["msg"] == "seen twice"


def test_line_timestamps_are_what_datetime_writes() -> None:
    rng = random.Random(26)
    moments = [0.0, 1.9999999, 1_700_000_000.9999996, 1_700_000_000.0000004]
    moments += [rng.uniform(0, 4e9) for _ in range(20_000)]
    moments += [1_800_000_000 + rng.random() for _ in range(20_000)]  # within one second
    for moment in moments:
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert logs._timestamp(moment) == expected, moment
