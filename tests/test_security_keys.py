"""Master-key rotation (`keys rotate|check`) and API keys (`api-keys create|list|revoke`),
through the CLI and a real receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from archiver.settings import Settings, load_settings
from devstack.fixtures import MASTER_KEY
from tests.conftest import migrated_database
from tests.test_cli import run
from tests.test_receiver import HMAC_KEY, add_tenant, media_body, serve
from titan_simulator.sender import signature

NEW_MASTER = "the-new-master-key-" + "n" * 20


def _settings(database_url: str, redis_url: str, key: str, previous: str | None = None) -> Settings:
    return load_settings(
        database_url=database_url,
        broker_url=redis_url,
        secret_key=key,
        previous_secret_keys=previous,
    )


def _post(url: str, media_id: str) -> int:
    body = media_body(media_id)
    headers = {"X-Webhook-Signature": signature(body, HMAC_KEY)}
    return httpx.post(f"{url}/webhooks/acme", content=body, headers=headers, timeout=10).status_code


def test_master_key_rotation_reencrypts_every_secret_without_downtime(
    tmp_path: Path, redis_url: str, pg_admin_url: str | None
) -> None:
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        add_tenant(database_url)
        both = {"ARCHIVER_SECRET_KEY": NEW_MASTER, "ARCHIVER_PREVIOUS_SECRET_KEYS": MASTER_KEY}

        # Step 1: every process runs with the new key and the old one; old secrets still open.
        check = run(database_url, "keys", "check", check=False, env=both)
        assert check.returncode == 1
        pending = json.loads(check.stdout)
        assert pending["needOlderKey"] == pending["secrets"] == 2  # hmac key, titan key
        with serve(_settings(database_url, redis_url, NEW_MASTER, MASTER_KEY)) as url:
            assert _post(url, "before-rotate") == 202

            # A dry run changes nothing.
            dry = json.loads(run(database_url, "keys", "rotate", "--dry-run", env=both).stdout)
            assert dry["reencrypted"] == pending["secrets"] and dry["dryRun"] is True
            assert run(database_url, "keys", "check", check=False, env=both).returncode == 1

            # Step 2: re-encrypt, while the receiver keeps accepting.
            done = run(database_url, "keys", "rotate", env=both)
            assert json.loads(done.stdout)["reencrypted"] == pending["secrets"]
            assert MASTER_KEY not in done.stdout + done.stderr
            assert NEW_MASTER not in done.stdout + done.stderr
            assert _post(url, "during-rotate") == 202
            again = json.loads(run(database_url, "keys", "rotate", env=both).stdout)
            assert again["reencrypted"] == 0  # idempotent

        # Step 3: the old key can go.
        only_new = {"ARCHIVER_SECRET_KEY": NEW_MASTER}
        assert (
            json.loads(run(database_url, "keys", "check", env=only_new).stdout)["needOlderKey"] == 0
        )
        with serve(_settings(database_url, redis_url, NEW_MASTER)) as url:
            assert _post(url, "after-rotate") == 202
        # A process left on the old key cannot open the secrets: 503 (Titan retries), no 500.
        with serve(_settings(database_url, redis_url, MASTER_KEY)) as url:
            answer = httpx.post(
                f"{url}/webhooks/acme",
                content=media_body("stale-process"),
                headers={"X-Webhook-Signature": signature(media_body("stale-process"), HMAC_KEY)},
                timeout=10,
            )
            assert answer.status_code == 503
            assert "Retry-After" in answer.headers

        # A key that opens nothing stops the rotation before anything changes.
        wrong = run(
            database_url, "keys", "rotate", check=False, env={"ARCHIVER_SECRET_KEY": "w" * 32}
        )
        assert wrong.returncode == 1 and "cannot be decrypted" in wrong.stderr
        assert "Traceback" not in wrong.stderr
        assert run(database_url, "keys", "check", env=only_new).returncode == 0


def test_api_keys_are_several_per_tenant_listed_revocable_and_track_last_use(
    tmp_path: Path, redis_url: str, pg_admin_url: str | None
) -> None:
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        first = add_tenant(database_url)
        other = add_tenant(database_url, name="other", hmac_key="other-hmac")
        etl = json.loads(run(database_url, "api-keys", "create", "acme", "--label", "etl").stdout)
        dash = json.loads(run(database_url, "api-keys", "create", "acme", "--label", "ui").stdout)
        assert etl["apiKey"].startswith("tak_") and etl["prefix"] == etl["apiKey"][:12]
        assert etl["apiKey"] != dash["apiKey"]

        with serve(_settings(database_url, redis_url, MASTER_KEY)) as url:

            def status(key: str) -> int:
                headers = {"Authorization": f"Bearer {key}"}
                return httpx.get(f"{url}/api/media", headers=headers, timeout=10).status_code

            assert [status(k) for k in (first, etl["apiKey"], dash["apiKey"], other)] == [200] * 4
            listed = run(database_url, "api-keys", "list", "--tenant", "acme").stdout
            keys = [json.loads(line) for line in listed.splitlines()]
            assert [k["label"] for k in keys] == [None, "etl", "ui"]
            assert all(k["lastUsedAt"] is not None and k["revokedAt"] is None for k in keys)
            for secret in (first, etl["apiKey"], dash["apiKey"]):
                assert secret not in listed and secret[12:] not in listed

            revoked = json.loads(run(database_url, "api-keys", "revoke", etl["prefix"]).stdout)
            assert revoked["revokedAt"] is not None and revoked["label"] == "etl"
            # At once: no cache stands between a revocation and the next request.
            assert status(etl["apiKey"]) == 401
            assert [status(k) for k in (first, dash["apiKey"], other)] == [200] * 3

            # One tenant's filter never reaches another's key; unknown prefixes say so.
            theirs = run(
                database_url, "api-keys", "revoke", other[:12], "--tenant", "acme", check=False
            )
            assert theirs.returncode == 1 and "no API key" in theirs.stderr
            assert status(other) == 200
            unknown = run(database_url, "api-keys", "revoke", "tak_nothing", check=False)
            assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
            time.sleep(0.1)
        everyone = run(database_url, "api-keys", "list").stdout.splitlines()
        assert len(everyone) == 4
        assert sum(json.loads(line)["revokedAt"] is not None for line in everyone) == 1
