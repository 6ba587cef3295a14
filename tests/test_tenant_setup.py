"""Setting a tenant up and changing it later, from the command line against a real Titan
simulator and S3 endpoint: secrets kept out of argv, client tokens refused, preflight checks
that name what is wrong, and updates that are checked before they are stored."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from archiver.infra.db import make_engine, session_scope
from archiver.secrets_box import SecretBox
from archiver.tenants.tenants import get_tenant, secrets_of
from devstack import services
from devstack.fixtures import MASTER_KEY
from tests.test_cli import run
from titan_simulator.sender import Simulator


@dataclass
class Titan:
    url: str
    sim: Simulator


@pytest.fixture(scope="module")
def titan() -> Iterator[Titan]:
    service = services.start_simulator("setup-sim")
    sim = Simulator(service.url)
    try:
        yield Titan(service.url, sim)
    finally:
        sim.close()
        service.stop()


@dataclass
class Setup:
    database_url: str
    titan: Titan
    s3_endpoint: str
    bucket: str
    titan_key: str
    tmp: Path

    def args(self, **change: str) -> list[str]:
        """`tenants add acme ...` arguments with working settings, secrets given as files."""
        hmac_file = self.tmp / "hmac"
        hmac_file.write_text("webhook-key-" + secrets.token_hex(8) + "\n")
        titan_file = self.tmp / "titan"
        titan_file.write_text(self.titan_key + "\n")
        options = {
            "--hmac-key-file": str(hmac_file),
            "--titan-url": self.titan.url,
            "--titan-api-key-file": str(titan_file),
            "--s3-bucket": self.bucket,
            "--s3-endpoint": self.s3_endpoint,
            "--s3-region": "us-east-1",
            "--s3-access-key-id": "testing",
            "--s3-secret-access-key-env": "SETUP_S3_SECRET",
        } | change
        return ["tenants", "add", "acme", *[x for kv in options.items() for x in kv]]

    def cli(self, *args: str, check: bool = False, **kwargs: Any) -> Any:
        env = {"SETUP_S3_SECRET": "testing", **kwargs.pop("env", {})}
        return run(self.database_url, *args, check=check, env=env, **kwargs)

    def stored_titan_key(self) -> str:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                tenant = get_tenant(session, name="acme")
                return secrets_of(tenant, box=SecretBox(MASTER_KEY)).titan_api_key
        finally:
            engine.dispose()


@pytest.fixture
def setup(database_url: str, titan: Titan, s3_endpoint: str, tmp_path: Path) -> Setup:
    key = "titan_setup_" + secrets.token_hex(8)
    titan.sim.add_account(api_key=key, account="acme-" + secrets.token_hex(3))
    bucket = "setup-" + secrets.token_hex(4)
    services.s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return Setup(database_url, titan, s3_endpoint, bucket, key, tmp_path)


def _findings(stdout: str) -> dict[str, dict[str, Any]]:
    return {doc["check"]: doc for doc in map(json.loads, stdout.splitlines())}


def test_add_takes_secrets_from_files_and_the_environment_and_checks_them(setup: Setup) -> None:
    added = setup.cli(*setup.args(), check=True)
    assert json.loads(added.stdout)["apiKey"].startswith("tak_")
    assert "ok   titan" in added.stderr and "FAIL" not in added.stderr
    assert setup.stored_titan_key() == setup.titan_key
    checked = setup.cli("tenants", "check", "acme", check=True)
    found = _findings(checked.stdout)
    assert set(found) == {
        "titan",
        "bucket write",
        "bucket read",
        "bucket delete",
        "multipart upload",
    }
    assert all(doc["ok"] for doc in found.values())
    # The probe object is gone again, and no multipart upload is left open.
    s3 = services.s3_client(setup.s3_endpoint)
    assert s3.list_objects_v2(Bucket=setup.bucket).get("KeyCount", 0) == 0
    assert not s3.list_multipart_uploads(Bucket=setup.bucket).get("Uploads")


def test_a_secret_can_come_from_standard_input(setup: Setup) -> None:
    args = setup.args()
    at = args.index("--titan-api-key-file")
    args[at + 1] = "-"
    setup.cli(*args, check=True, stdin=setup.titan_key + "\n")
    assert setup.stored_titan_key() == setup.titan_key


def test_a_secret_given_twice_is_refused(setup: Setup) -> None:
    result = setup.cli(*setup.args(), "--titan-api-key", setup.titan_key)
    assert result.returncode == 2 and "give --titan-api-key once" in result.stderr


def test_a_client_token_is_refused_with_a_clear_message(setup: Setup) -> None:
    (setup.tmp / "ct").write_text("titan_ct_" + secrets.token_hex(16))
    result = setup.cli(*setup.args(**{"--titan-api-key-file": str(setup.tmp / "ct")}))
    assert result.returncode == 1 and "server API key" in result.stderr
    assert "Traceback" not in result.stderr
    assert setup.cli("tenants", "list", check=True).stdout.strip() == ""


def test_a_key_titan_refuses_is_reported_and_nothing_is_stored(setup: Setup) -> None:
    (setup.tmp / "bad").write_text("titan_not_a_key_" + secrets.token_hex(8))
    result = setup.cli(*setup.args(**{"--titan-api-key-file": str(setup.tmp / "bad")}))
    assert result.returncode == 1 and "Titan refused the API key (401)" in result.stderr
    assert "nothing was changed" in result.stderr
    assert setup.cli("tenants", "list", check=True).stdout.strip() == ""


def test_check_names_a_bad_key_and_a_bucket_it_cannot_write(setup: Setup) -> None:
    setup.cli(*setup.args(**{"--s3-bucket": "no-such-bucket-here"}), "--no-check", check=True)
    (setup.tmp / "bad").write_text("titan_revoked_" + secrets.token_hex(8))
    setup.cli(
        "tenants",
        "update",
        "acme",
        "--titan-api-key-file",
        str(setup.tmp / "bad"),
        "--no-check",
        check=True,
    )
    result = setup.cli("tenants", "check", "acme")
    assert result.returncode == 1
    found = _findings(result.stdout)
    assert not found["titan"]["ok"] and "refused the API key" in found["titan"]["detail"]
    write = found["bucket write"]
    assert not write["ok"] and "no-such-bucket-here" in write["detail"]
    assert "s3:PutObject" in write["detail"]


def test_update_changes_only_what_is_named_and_is_checked_first(setup: Setup) -> None:
    setup.cli(*setup.args(), check=True)
    before = json.loads(setup.cli("tenants", "show", "acme", check=True).stdout)
    other = "setup-" + secrets.token_hex(4)
    services.s3_client(setup.s3_endpoint).create_bucket(Bucket=other)
    updated = setup.cli("tenants", "update", "acme", "--s3-bucket", other, "--s3-prefix", "wa/")
    assert updated.returncode == 0, updated.stderr
    after = json.loads(updated.stdout)
    assert (after["s3Bucket"], after["s3Prefix"]) == (other, "wa/")
    unchanged = {k: v for k, v in before.items() if k not in {"s3Bucket", "s3Prefix"}}
    assert {k: after[k] for k in unchanged} == unchanged

    # A new key that Titan refuses changes nothing; a good one is stored encrypted.
    (setup.tmp / "bad").write_text("titan_wrong_" + secrets.token_hex(8))
    refused = setup.cli("tenants", "update", "acme", "--titan-api-key-file", str(setup.tmp / "bad"))
    assert refused.returncode == 1 and "Titan refused the API key" in refused.stderr
    assert setup.stored_titan_key() == setup.titan_key
    new_key = "titan_rotated_" + secrets.token_hex(8)
    setup.titan.sim.add_account(api_key=new_key, account="acme-rotated-" + secrets.token_hex(3))
    rotated = setup.cli(
        "tenants", "update", "acme", "--titan-api-key-env", "NEW_KEY", env={"NEW_KEY": new_key}
    )
    assert rotated.returncode == 0, rotated.stderr
    assert setup.stored_titan_key() == new_key and new_key not in rotated.stdout + rotated.stderr


def test_update_with_nothing_to_change_or_a_client_token_is_refused(setup: Setup) -> None:
    setup.cli(*setup.args(), check=True)
    nothing = setup.cli("tenants", "update", "acme")
    assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
    token = setup.cli(
        "tenants", "update", "acme", "--titan-api-key", "titan_ct_" + "x" * 20, "--no-check"
    )
    assert token.returncode == 1 and "server API key" in token.stderr
