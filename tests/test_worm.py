"""WORM retention with S3 Object Lock, on a real S3 server (Ceph's RADOS Gateway): every
object (original and rendition) is written with its retain-until date; a compliance-locked
object cannot be deleted by the archiver, nor with the tenant's own credentials; a legal
hold blocks deletion until it is released; governance mode gives way only to the explicit,
audited bypass. Real receiver, archive and render workers, simulator."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from archiver.tables import RenderState, Status, utcnow
from devstack import processes, services
from devstack.fixtures import TenantSetup, process_env
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database

pytestmark = pytest.mark.rgw


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, rgw_endpoint: str
) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("worm")
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(database_url, redis_dbs.take())
        with running_rig(
            "worm",
            database_url=database_url,
            s3_endpoint=rgw_endpoint,
            env=env,
            tmp=tmp,
            render=True,
        ) as rig:
            yield rig


def _locked_tenant(rig: Rig, mode: str) -> TenantSetup:
    """A tenant added with the CLI as an operator would, --object-lock MODE --lock-days 1."""
    name = f"{mode[:4]}-{secrets.token_hex(3)}"
    tenant = TenantSetup(
        name=name,
        hmac_key=f"{name}-hmac-" + secrets.token_hex(8),
        titan_api_key=f"titan_{name}_" + secrets.token_hex(6),
        bucket=f"{name}-bucket",
    )
    services.s3_client(rig.s3_endpoint).create_bucket(
        Bucket=tenant.bucket, ObjectLockEnabledForBucket=True
    )
    rig.sim.add_account(api_key=tenant.titan_api_key, account=name)
    added = rig.cli(
        *("tenants", "add", name, "--hmac-key", tenant.hmac_key, "--titan-url", rig.sim.base_url),
        *("--titan-api-key", tenant.titan_api_key, "--s3-bucket", tenant.bucket),
        *("--s3-endpoint", rig.s3_endpoint, "--s3-region", "us-east-1"),
        *("--s3-access-key-id", "testing", "--s3-secret-access-key", "testing"),
        *("--object-lock", mode, "--lock-days", "1"),
    )
    view = json.loads(added.stdout)
    assert (view["objectLock"], view["lockDays"]) == (mode, 1)
    return tenant


def _archived(rig: Rig, tenant: TenantSetup) -> Any:
    item = rig.sim.make_media(account=tenant.name, message_type="image", size=0, sample=True)
    rig.send(tenant, item)
    row = rig.wait_status([item], "archived", tenant=tenant)[item.media_id]
    processes.wait_until(
        lambda: rig.rows(tenant)[item.media_id].render_state == RenderState.DONE,
        timeout=90,
        what="its thumbnail",
    )
    return rig.rows(tenant)[row.media_id]


def _erase(rig: Rig, tenant: TenantSetup, media_id: str, *flags: str) -> dict[str, Any]:
    done = rig.cli("media", "erase", "--tenant", tenant.name, "--id", media_id, "--yes", *flags)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_tenant_cannot_lock_into_a_bucket_without_object_lock(rig: Rig) -> None:
    name = f"nolk-{secrets.token_hex(3)}"
    services.s3_client(rig.s3_endpoint).create_bucket(Bucket=f"{name}-bucket")
    rig.sim.add_account(api_key=f"titan_{name}_key0", account=name)
    result = rig.cli(
        *("tenants", "add", name, "--hmac-key", "h" * 24, "--titan-url", rig.sim.base_url),
        *("--titan-api-key", f"titan_{name}_key0", "--s3-bucket", f"{name}-bucket"),
        *("--s3-endpoint", rig.s3_endpoint, "--s3-region", "us-east-1"),
        *("--s3-access-key-id", "testing", "--s3-secret-access-key", "testing"),
        *("--object-lock", "compliance", "--lock-days", "1"),
        codes=(1,),
    )
    assert "has no Object Lock" in result.stderr and "--object-lock off" in result.stderr
    assert name not in rig.cli("tenants", "list").stdout  # nothing was stored


def test_compliance_locked_objects_survive_the_archiver_and_the_tenants_credentials(
    rig: Rig,
) -> None:
    tenant = _locked_tenant(rig, "compliance")
    checked = rig.cli("tenants", "check", tenant.name).stdout.splitlines()
    (lock,) = [doc for doc in map(json.loads, checked) if doc["check"] == "object lock"]
    assert lock["ok"] is True
    row = _archived(rig, tenant)
    s3 = services.s3_client(rig.s3_endpoint)
    thumb = json.loads(rig.cli("media", "show", row.media_id).stdout)["renditions"]
    assert [r["kind"] for r in thumb] == ["thumbnail"]
    for key in (row.object_key, f"{row.object_key}.thumb.webp"):
        retention = s3.get_object_retention(Bucket=tenant.bucket, Key=key)["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        left = retention["RetainUntilDate"] - utcnow()
        assert timedelta(hours=23) < left <= timedelta(days=1)

    done = _erase(rig, tenant, row.media_id)
    assert done["rows"] == 0 and done["objects"] == 0
    assert done["locked"][0].startswith(f"{row.media_id}: locked until ")
    assert done["locked"][0].endswith("(compliance)")
    again = _erase(rig, tenant, row.media_id, "--bypass-governance")  # no bypass for compliance
    assert again["rows"] == 0 and len(again["locked"]) == 1
    assert rig.rows(tenant)[row.media_id].status == Status.ARCHIVED

    # The tenant's own credentials cannot remove the retained version either.
    (version,) = [
        v["VersionId"]
        for v in s3.list_object_versions(Bucket=tenant.bucket, Prefix=row.object_key)["Versions"]
        if v["Key"] == row.object_key
    ]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=tenant.bucket, Key=row.object_key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    body = s3.get_object(Bucket=tenant.bucket, Key=row.object_key, VersionId=version)["Body"]
    assert body.read()  # still there, whole


def test_a_legal_hold_blocks_deletion_until_released_and_governance_needs_the_bypass(
    rig: Rig,
) -> None:
    tenant = _locked_tenant(rig, "governance")
    row = _archived(rig, tenant)
    s3 = services.s3_client(rig.s3_endpoint)
    keys = [row.object_key, f"{row.object_key}.thumb.webp"]
    rig.cli("media", "hold", "--tenant", tenant.name, "--id", row.media_id)
    for key in keys:
        assert _hold(s3, tenant.bucket, key) == "ON"

    held = _erase(rig, tenant, row.media_id, "--include-held", "--bypass-governance")
    assert held["rows"] == 0 and held["locked"] == [f"{row.media_id}: under legal hold"]

    rig.cli("media", "hold", "--tenant", tenant.name, "--id", row.media_id, "--release")
    for key in keys:
        assert _hold(s3, tenant.bucket, key) == "OFF"
    locked = _erase(rig, tenant, row.media_id)
    assert locked["rows"] == 0 and locked["locked"][0].endswith("(governance)")

    gone = _erase(rig, tenant, row.media_id, "--bypass-governance")
    assert gone["rows"] == 1 and gone["objects"] >= 2 and gone["locked"] == []
    assert row.media_id not in rig.rows(tenant)
    left = s3.list_object_versions(Bucket=tenant.bucket, Prefix=row.object_key or "")
    assert left.get("Versions", []) == [] and left.get("DeleteMarkers", []) == []
    trail = rig.cli("audit", "list", "--tenant", tenant.name, "--format", "jsonl").stdout
    erasures = [json.loads(line) for line in trail.splitlines() if '"media.erase"' in line]
    assert any(e["detail"].get("bypassGovernance") is True for e in erasures)


def _hold(s3: Any, bucket: str, key: str | None) -> str:
    return str(s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"])
