"""Webhook key rotation: both keys verify until the previous one expires, then only the new."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from devstack.fixtures import settings_for
from tests.conftest import migrated_database
from tests.test_cli import run
from tests.test_receiver import add_tenant, media_body, serve
from titan_simulator.sender import signature

CACHE_SECONDS = 5.2  # the receiver's tenant cache lifetime, and a little more


def test_rotated_keys_verify_until_the_previous_one_expires(
    tmp_path: Path, redis_url: str, pg_admin_url: str | None
) -> None:
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        add_tenant(database_url, "acme", "key-A-original")
        with serve(settings_for(database_url, redis_url)) as url:
            sent = iter(range(1000))

            def post(key: str) -> int:
                body = media_body(f"rot-{next(sent)}")
                headers = {"X-Webhook-Signature": signature(body, key)}
                return httpx.post(f"{url}/webhooks/acme", content=body, headers=headers).status_code

            assert post("key-A-original") == 202
            rotated = run(
                database_url,
                "tenants",
                "rotate-hmac-key",
                "acme",
                "--hmac-key",
                "key-B-rotated",
                "--previous-valid-for",
                "1",
            )
            view = json.loads(rotated.stdout)
            assert view["previousHmacKeyExpiresAt"] is not None and "key-" not in rotated.stdout
            time.sleep(CACHE_SECONDS)
            assert (post("key-A-original"), post("key-B-rotated")) == (202, 202)

            run(
                database_url,
                "tenants",
                "rotate-hmac-key",
                "acme",
                "--hmac-key",
                "key-C-now",
                "--previous-valid-for",
                "0",
            )
            time.sleep(CACHE_SECONDS)
            assert (post("key-A-original"), post("key-B-rotated"), post("key-C-now")) == (
                401,
                401,
                202,
            )

            run(
                database_url,
                "tenants",
                "rotate-hmac-key",
                "acme",
                "--hmac-key",
                "key-D-next",
                "--previous-valid-for",
                str(2 / 3600),
            )  # C verifies for two more seconds
            time.sleep(CACHE_SECONDS)
            assert (post("key-C-now"), post("key-D-next")) == (401, 202)

        same = run(
            database_url,
            "tenants",
            "rotate-hmac-key",
            "acme",
            "--hmac-key",
            "key-D-next",
            check=False,
        )
        assert same.returncode == 1 and "already" in same.stderr
