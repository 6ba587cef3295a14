"""A tenant whose Titan key or bucket is refused is paused, not failed: its rows wait without
spending attempts, other tenants go on, and fixing the tenant (tenants update) or its bucket
coming back (the probe) archives everything. Real processes: simulator, receiver, a worker
running beat, moto; SQLite."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from archiver.infra.db import make_engine, session_scope
from archiver.scheduling import pauses
from archiver.tables import Media
from devstack import processes, services
from devstack.fixtures import (
    TenantSetup,
    add_tenant,
    process_env,
    scrape,
)
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database
from tests.test_cli import run
from titan_simulator.sender import SentMedia, post_signed


@dataclass
class Stack(Rig):
    def send_images(self, tenant: TenantSetup, count: int) -> list[SentMedia]:
        media = [self.media(tenant, "image", size=20_000) for _ in range(count)]
        self.send(tenant, *media)
        return media

    def row_list(self, tenant: TenantSetup) -> list[Media]:
        return list(self.rows(tenant).values())

    def paused(self, name: str, *, cli: bool = False) -> dict[str, Any] | None:
        """The tenant's pause as ``status --json`` shows it (``cli``), else as the database
        holds it (cheap enough to poll: the CLI waits for the workers' broadcast)."""
        if cli:
            status = json.loads(self.cli("status", "--json", codes=(0, 3)).stdout)
            found = [p for p in status["pausedTenants"] if p["tenant"] == name]
            return found[0] if found else None
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                held = [p for p in pauses.paused(session) if p.tenant == name]
        finally:
            engine.dispose()
        return {"tenant": name, "reason": held[0].reason, "auto": held[0].auto} if held else None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, s3_endpoint: str
) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("pause")
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(database_url, redis_dbs.take(), ARCHIVER_PAUSE_PROBE_SECONDS="1")
        with running_rig(
            "pause", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp
        ) as rig:
            yield Stack(**vars(rig))


# A resumed tenant's waiting rows are published at the dispatcher's next round (0.5 s here)
# and archived at once: not after the 30 s a freshly received row is left for its own
# publish, nor when a worker's 10 s tenant cache expires.
RESUMED = 15.0


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    processes.wait_until(condition, timeout=timeout, interval=0.25, what=what)


def _waiting_untouched(rows: list[Media]) -> bool:
    return all(r.status == "queued" and r.attempts == 0 for r in rows)


def test_a_titan_key_refused_pauses_its_tenant_alone_until_it_is_updated(stack: Stack) -> None:
    a, b = (
        stack.tenant("pause-a-" + secrets.token_hex(2)),
        stack.tenant("ok-b-" + secrets.token_hex(2)),
    )
    revoked = "titan_revoked_" + secrets.token_hex(8)
    stack.cli(
        "tenants",
        "update",
        a.name,
        "--titan-api-key-env",
        "KEY",
        "--no-check",
        env={"KEY": revoked},
    )
    a_media, b_media = stack.send_images(a, 3), stack.send_images(b, 2)
    _wait(lambda: stack.paused(a.name) is not None, "tenant A paused")
    _wait(lambda: all(r.status == "archived" for r in stack.row_list(b)), "tenant B archived")
    paused = stack.paused(a.name, cli=True)
    assert paused is not None and "401" in paused["reason"] and paused["auto"] is True
    assert stack.paused(b.name) is None
    # A's rows keep their place: none failed, no attempt spent.
    _wait(lambda: _waiting_untouched(stack.row_list(a)), "A's rows handed back")
    assert len(stack.row_list(a)) == len(a_media) and len(stack.row_list(b)) == len(b_media)
    metrics = scrape(f"{stack.receiver_url}/metrics")
    assert metrics[("archiver_tenant_paused", (("reason", "titan"), ("tenant", a.name)))] == 1
    trail = stack.cli("audit", "list", "--tenant", a.name, "--format", "jsonl").stdout
    paused_by = [json.loads(line) for line in trail.splitlines()]
    assert [(r["actor"], r["action"]) for r in paused_by][:1] == [("worker", "tenant.pause")]
    assert "401" in paused_by[0]["detail"]["reason"]

    # The good key, checked against Titan before it is stored, resumes A: everything archives.
    stack.cli(
        "tenants", "update", a.name, "--titan-api-key-env", "KEY", env={"KEY": a.titan_api_key}
    )
    assert stack.paused(a.name) is None
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "A archived after update",
        timeout=RESUMED,
    )
    assert {r.media_id: r.sha256 for r in stack.row_list(a)} == {
        m.media_id: m.sha256 for m in a_media
    }


def test_a_bucket_refused_pauses_its_tenant_until_new_settings_are_given(stack: Stack) -> None:
    a = stack.tenant("pause-s3-" + secrets.token_hex(2))
    stack.cli("tenants", "update", a.name, "--s3-bucket", "gone-" + a.bucket, "--no-check")
    media = stack.send_images(a, 2)
    _wait(lambda: stack.paused(a.name) is not None, "tenant paused by its bucket")
    paused = stack.paused(a.name, cli=True)
    assert paused is not None and "NoSuchBucket" in paused["reason"]
    _wait(lambda: _waiting_untouched(stack.row_list(a)), "rows handed back")
    stack.cli("tenants", "update", a.name, "--s3-bucket", a.bucket)
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "archived after update",
        timeout=RESUMED,
    )
    assert len(stack.row_list(a)) == len(media)


def test_a_tenant_paused_by_a_worker_resumes_on_its_own_once_its_bucket_works(
    stack: Stack,
) -> None:
    a = stack.tenant("pause-probe-" + secrets.token_hex(2))
    later = "later-" + a.bucket
    stack.cli("tenants", "update", a.name, "--s3-bucket", later, "--no-check")
    stack.send_images(a, 2)
    _wait(lambda: stack.paused(a.name) is not None, "tenant paused by its bucket")
    services.s3_client(stack.s3_endpoint).create_bucket(Bucket=later)
    _wait(lambda: stack.paused(a.name) is None, "the probe resumed it")
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "archived after resume",
        timeout=RESUMED,
    )


def test_an_operator_pause_holds_until_resume(stack: Stack) -> None:
    a = stack.tenant("held-" + secrets.token_hex(2))
    stack.cli("tenants", "pause", a.name, "--reason", "migrating the bucket")
    stack.send_images(a, 2)
    _wait(lambda: _waiting_untouched(stack.row_list(a)), "rows held")
    paused = stack.paused(a.name, cli=True)
    assert paused is not None and paused["reason"] == "migrating the bucket"
    assert paused["auto"] is False
    # Changing its settings does not lift an operator's pause; resuming does.
    stack.cli("tenants", "update", a.name, "--s3-prefix", "moved/")
    assert stack.paused(a.name) is not None
    stack.cli("tenants", "resume", a.name)
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "archived after resume",
        timeout=RESUMED,
    )


def _session_event(stack: Stack, tenant: TenantSetup, event: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.receiver_url}/webhooks/{tenant.name}"
    answer = post_signed(stack.client, url, tenant.hmac_key, event)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_logged_out_session_holds_its_media_until_titan_reports_it_connected(
    stack: Stack,
) -> None:
    a = stack.tenant("sessions-" + secrets.token_hex(2))
    logged_out = {
        "id": "evt_" + secrets.token_hex(4),
        "event": "session.status",
        "session": "support",
        "payload": {"status": "DISCONNECTED", "statusReason": "LOGGED_OUT"},
    }
    assert _session_event(stack, a, logged_out) == {"status": "paused", "session": "support"}
    url = f"{stack.receiver_url}/webhooks/{a.name}"
    held: list[str] = []
    other: list[str] = []
    for session, into in (("support", held), ("support", held), ("sales", other)):
        item = stack.sim.make_media(
            account=a.name, message_type="image", size=20_000, session=session
        )
        assert post_signed(stack.client, url, a.hmac_key, item.envelope).status_code == 202
        into.append(item.media_id)
    # The other session goes on; the logged-out one's rows wait, untouched and not failed.
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a) if r.media_id in other),
        "the connected session archived",
    )
    # status exits 3 while a session is paused: a script or monitor sees it.
    status = json.loads(stack.cli("status", "--json", codes=(3,)).stdout)
    found = [p for p in status["pausedSessions"] if p["tenant"] == a.name]
    assert [(p["session"], p["reason"]) for p in found] == [
        ("support", "logged out (session.status LOGGED_OUT)")
    ]
    metrics = scrape(f"{stack.receiver_url}/metrics")
    assert metrics[("archiver_session_paused", (("session", "support"), ("tenant", a.name)))] == 1
    _wait(
        lambda: _waiting_untouched([r for r in stack.row_list(a) if r.media_id in held]),
        "the logged-out session's rows held",
    )
    assert stack.paused(a.name) is None  # the tenant itself is not paused

    connected = {**logged_out, "payload": {"status": "CONNECTED"}}
    assert _session_event(stack, a, connected) == {"status": "resumed", "session": "support"}
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "archived after reconnect",
        timeout=RESUMED,
    )
    assert all(r.attempts == 1 for r in stack.row_list(a)), "the wait spent attempts"
    status = json.loads(stack.cli("status", "--json", codes=(0, 3)).stdout)
    assert [p for p in status["pausedSessions"] if p["tenant"] == a.name] == []


@pytest.fixture
def enforcing_s3() -> Iterator[str]:
    """A private moto S3 server that checks credentials against its IAM users: auth is off
    while the test sets up, then switched on (moto's ``/moto-api/reset-auth``)."""
    service = services.start_moto("moto-iam")
    try:
        yield service.url
    finally:
        service.stop()


def _iam_user(endpoint: str, name: str, *, s3_rights: bool) -> tuple[str, str]:
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName=name)
    if s3_rights:
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_s3_access_denied_pauses_its_tenant_until_new_credentials_are_given(
    stack: Stack, enforcing_s3: str
) -> None:
    a = add_tenant(
        stack.database_url,
        sim=stack.sim,
        s3_endpoint=enforcing_s3,
        name="denied-" + secrets.token_hex(2),
    )
    reader_id, reader_secret = _iam_user(enforcing_s3, "no-rights", s3_rights=False)
    writer_id, writer_secret = _iam_user(enforcing_s3, "writer", s3_rights=True)
    httpx.post(f"{enforcing_s3}/moto-api/reset-auth", content=b"0").raise_for_status()
    stack.cli(
        "tenants",
        "update",
        a.name,
        "--s3-access-key-id",
        reader_id,
        "--s3-secret-access-key-env",
        "S3_SECRET",
        "--no-check",
        env={"S3_SECRET": reader_secret},
    )
    media = stack.send_images(a, 2)
    _wait(lambda: stack.paused(a.name) is not None, "tenant paused by AccessDenied")
    paused = stack.paused(a.name, cli=True)
    assert paused is not None and "AccessDenied" in paused["reason"], paused
    _wait(lambda: _waiting_untouched(stack.row_list(a)), "rows handed back, none failed")

    # Credentials without write rights are refused by the check that update runs.
    refused = run(
        stack.database_url,
        "tenants",
        "update",
        a.name,
        "--s3-secret-access-key-env",
        "S3_SECRET",
        check=False,
        env={**stack.env, "S3_SECRET": reader_secret},
    )
    assert refused.returncode != 0 and "AccessDenied" in refused.stderr, refused.stderr
    assert stack.paused(a.name) is not None

    stack.cli(
        "tenants",
        "update",
        a.name,
        "--s3-access-key-id",
        writer_id,
        "--s3-secret-access-key-env",
        "S3_SECRET",
        env={"S3_SECRET": writer_secret},
    )
    assert stack.paused(a.name) is None
    _wait(
        lambda: all(r.status == "archived" for r in stack.row_list(a)),
        "archived after update",
        timeout=RESUMED,
    )
    assert {r.media_id: r.sha256 for r in stack.row_list(a)} == {
        m.media_id: m.sha256 for m in media
    }
    assert all(r.attempts == 1 for r in stack.row_list(a))
