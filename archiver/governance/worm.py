"""WORM retention with S3 Object Lock: what each object is written with, whether a bucket
can hold locked objects, and whether an object may be deleted now.

A tenant with ``object_lock_mode`` (governance or compliance) and ``object_lock_days`` has
every object written for it (originals and renditions) retained until that many days after
it was written. In compliance mode nobody, the archiver and the bucket's owner included,
can delete a retained version before its date; in governance mode only a caller allowed
``s3:BypassGovernanceRetention`` who asks to bypass it (``media erase --bypass-governance``,
audited). An S3 legal hold (``media hold``) blocks deletion in either mode until released.
Object Lock needs a bucket created with it (and so versioned): ``tenants check`` says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from archiver.tables import Tenant

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# What S3 (and RGW, moto) answer for a bucket or object without a lock to report.
NO_LOCK = {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"}


def retain_until(tenant: Tenant, now: datetime) -> datetime | None:
    """Until when an object written for ``tenant`` now is retained (None: no lock)."""
    if tenant.object_lock_mode is None or not tenant.object_lock_days:
        return None
    return now + timedelta(days=tenant.object_lock_days)


def lock_fields(tenant: Tenant, now: datetime) -> dict[str, Any]:
    """What a PUT or a multipart upload of the tenant carries to be retained (or nothing)."""
    until = retain_until(tenant, now)
    if until is None or tenant.object_lock_mode is None:
        return {}
    return {"ObjectLockMode": tenant.object_lock_mode.upper(), "ObjectLockRetainUntilDate": until}


def bucket_problem(s3: S3Client, bucket: str) -> str | None:
    """Why ``bucket`` cannot hold locked objects (None: it can)."""
    try:
        found = s3.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in NO_LOCK:
            return (
                f"bucket {bucket!r} has no Object Lock: it can only be turned on when a bucket "
                "is created (create a new bucket with Object Lock enabled, e.g. "
                "`aws s3api create-bucket --object-lock-enabled-for-bucket`, and move the "
                "tenant to it), or turn the tenant's lock off (--object-lock off)"
            )
        return f"could not read bucket {bucket!r}'s Object Lock configuration: {code}"
    except BotoCoreError as exc:
        return f"could not read bucket {bucket!r}'s Object Lock configuration: {exc}"
    if found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        return f"bucket {bucket!r} has Object Lock configured but not enabled"
    return None


def why_locked(
    s3: S3Client, *, bucket: str, key: str, now: datetime, bypass_governance: bool = False
) -> str | None:
    """Why the object at ``key`` may not be deleted now: "under legal hold", "locked until
    <date> (compliance)"; None when it may (no lock, expired, or governance bypassed)."""
    try:
        hold = s3.get_object_legal_hold(Bucket=bucket, Key=key)
        if hold.get("LegalHold", {}).get("Status") == "ON":
            return "under legal hold"
    except ClientError as exc:
        if not _no_lock(exc):
            raise
    try:
        retention = s3.get_object_retention(Bucket=bucket, Key=key).get("Retention", {})
    except ClientError as exc:
        if _no_lock(exc):
            return None
        raise
    until, mode = retention.get("RetainUntilDate"), str(retention.get("Mode", "")).lower()
    if until is None or until <= now:
        return None
    if mode == "governance" and bypass_governance:
        return None
    return f"locked until {until.isoformat()} ({mode})"


def set_legal_hold(s3: S3Client, *, bucket: str, keys: list[str], on: bool) -> None:
    """Put (or lift) the S3 legal hold on each object."""
    for key in keys:
        s3.put_object_legal_hold(
            Bucket=bucket, Key=key, LegalHold={"Status": "ON" if on else "OFF"}
        )


def _no_lock(exc: ClientError) -> bool:
    """The object (or bucket) has no retention or legal hold to report."""
    code = exc.response.get("Error", {}).get("Code", "")
    # InvalidRequest: a bucket without Object Lock asked for an object's lock.
    return code in NO_LOCK or code == "InvalidRequest"
