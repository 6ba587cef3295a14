"""Tenant records: create, read, remove, and decrypt a tenant's secrets for use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from archiver.errors import Conflict, NotFound, PayloadError
from archiver.names import SESSION_RE
from archiver.secrets_box import SecretBox
from archiver.tables import ApiKey, Media, Strategy, Tenant, utcnow
from archiver.tenants.api_keys import issue_key


@dataclass(frozen=True)
class TenantSpec:
    """What an operator gives when adding a tenant (secrets in plaintext, in memory only)."""

    name: str
    hmac_key: str
    titan_url: str
    titan_api_key: str
    strategy: str
    s3_bucket: str
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = ""
    s3_ca_bundle: str | None = None  # PEM: a private CA the S3 endpoint is verified against


@dataclass(frozen=True)
class TenantSecrets:
    """A tenant's decrypted secrets, for the process that needs them right now."""

    hmac_keys: tuple[str, ...]
    titan_api_key: str
    s3_secret_access_key: str | None


CLIENT_TOKEN_PREFIX = "titan_ct_"  # noqa: S105 - a prefix, not a secret


def validate_spec(spec: TenantSpec) -> None:
    """Raise PayloadError naming the first field of ``spec`` that is unusable."""
    if not SESSION_RE.match(spec.name):
        raise PayloadError("name must match ^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
    if not spec.hmac_key or len(spec.hmac_key) < 8:
        raise PayloadError("hmac-key must be at least 8 characters")
    validate_settings(spec)


def validate_settings(spec: TenantSpec) -> None:
    """The checks a tenant's Titan and bucket settings pass, on add and on every update."""
    if spec.strategy not in {s.value for s in Strategy}:
        raise PayloadError("strategy must be 'download' or 'persist'")
    for label, url in (("titan-url", spec.titan_url), ("s3-endpoint", spec.s3_endpoint)):
        if url and (urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).netloc):
            raise PayloadError(f"{label} must be an http(s) URL")
    if not spec.titan_api_key:
        raise PayloadError("titan-api-key is required")
    if spec.titan_api_key.startswith(CLIENT_TOKEN_PREFIX):
        raise PayloadError(
            "titan-api-key is a client token (titan_ct_...): those last 15 minutes and cannot "
            "call media routes; give a server API key (titan_...)"
        )
    if not spec.s3_bucket:
        raise PayloadError("s3-bucket is required")
    if spec.s3_ca_bundle:
        from archiver.infra.buckets import validate_ca_bundle

        validate_ca_bundle(spec.s3_ca_bundle)


@dataclass(frozen=True)
class TenantChanges:
    """What ``tenants update`` changes: None leaves a field as it is; "" clears an optional
    one (endpoint, region, access key id, secret access key, prefix)."""

    titan_url: str | None = None
    titan_api_key: str | None = None
    strategy: str | None = None
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str | None = None
    s3_ca_bundle: str | None = None  # PEM text; "" goes back to the system's trust store

    def any(self) -> bool:
        return any(value is not None for value in self.__dict__.values())


def updated_spec(tenant: Tenant, secrets: TenantSecrets, changes: TenantChanges) -> TenantSpec:
    """The tenant's settings with ``changes`` applied, secrets in plaintext (for checking)."""

    def pick(new: str | None, old: str | None) -> str | None:
        return old if new is None else new

    return TenantSpec(
        name=tenant.name,
        hmac_key=secrets.hmac_keys[0],
        titan_url=pick(changes.titan_url, tenant.titan_url) or "",
        titan_api_key=pick(changes.titan_api_key, secrets.titan_api_key) or "",
        strategy=pick(changes.strategy, tenant.strategy) or "",
        s3_bucket=pick(changes.s3_bucket, tenant.s3_bucket) or "",
        s3_endpoint=pick(changes.s3_endpoint, tenant.s3_endpoint) or None,
        s3_region=pick(changes.s3_region, tenant.s3_region) or None,
        s3_access_key_id=pick(changes.s3_access_key_id, tenant.s3_access_key_id) or None,
        s3_secret_access_key=pick(changes.s3_secret_access_key, secrets.s3_secret_access_key)
        or None,
        s3_prefix=pick(changes.s3_prefix, tenant.s3_prefix) or "",
        s3_ca_bundle=pick(changes.s3_ca_bundle, tenant.s3_ca_bundle) or None,
    )


def update_tenant(
    session: Session, *, box: SecretBox, name: str, changes: TenantChanges
) -> tuple[Tenant, TenantSpec]:
    """Apply ``changes`` to a tenant (validated as on add); return it and its new settings.

    Receivers and workers pick the change up within their tenant caches' lifetime (5-10 s).
    """
    if not changes.any():
        raise PayloadError("nothing to update: name at least one setting to change")
    tenant = get_tenant(session, name=name)
    spec = updated_spec(tenant, secrets_of(tenant, box=box), changes)
    validate_settings(spec)
    tenant.titan_url = spec.titan_url.rstrip("/")
    tenant.strategy = spec.strategy
    tenant.s3_bucket = spec.s3_bucket
    tenant.s3_endpoint = spec.s3_endpoint
    tenant.s3_region = spec.s3_region
    tenant.s3_access_key_id = spec.s3_access_key_id
    tenant.s3_prefix = spec.s3_prefix
    tenant.s3_ca_bundle = spec.s3_ca_bundle
    if changes.titan_api_key is not None:
        tenant.titan_api_key_enc = box.encrypt(spec.titan_api_key)
    if changes.s3_secret_access_key is not None:
        tenant.s3_secret_enc = (
            box.encrypt(spec.s3_secret_access_key) if spec.s3_secret_access_key else None
        )
    if tenant.paused_auto:
        # A worker paused it because Titan or the bucket refused its settings; new settings
        # are what it waited for. An operator's pause stays until `tenants resume`.
        tenant.paused_at, tenant.paused_reason, tenant.paused_auto = None, None, False
    session.add(tenant)
    session.flush()
    return tenant, spec


def create_tenant(session: Session, *, box: SecretBox, spec: TenantSpec) -> tuple[Tenant, str]:
    """Store a new tenant with its secrets encrypted; return it and a fresh API key."""
    validate_spec(spec)
    tenant = Tenant(
        name=spec.name,
        titan_url=spec.titan_url.rstrip("/"),
        strategy=spec.strategy,
        s3_bucket=spec.s3_bucket,
        s3_endpoint=spec.s3_endpoint or None,
        s3_region=spec.s3_region or None,
        s3_access_key_id=spec.s3_access_key_id or None,
        s3_prefix=spec.s3_prefix,
        s3_ca_bundle=spec.s3_ca_bundle or None,
        hmac_key_enc=box.encrypt(spec.hmac_key),
        titan_api_key_enc=box.encrypt(spec.titan_api_key),
        s3_secret_enc=box.encrypt(spec.s3_secret_access_key) if spec.s3_secret_access_key else None,
        created_at=utcnow(),
    )
    session.add(tenant)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"tenant {spec.name!r} already exists") from exc
    assert tenant.id is not None
    return tenant, issue_key(session, tenant_id=tenant.id)


def get_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.exec(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    return tenant


def tenant_exists(session: Session, *, name: str) -> bool:
    return session.exec(select(Tenant.id).where(Tenant.name == name)).first() is not None


def get_tenant_by_id(session: Session, *, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id}")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.exec(select(Tenant).order_by(Tenant.name)))


def count_rows(session: Session, *, name: str) -> int:
    """How many media rows the tenant has (NotFound if there is no such tenant)."""
    tenant = get_tenant(session, name=name)
    return int(
        session.exec(
            select(func.count()).select_from(Media).where(Media.tenant_id == tenant.id)
        ).one()
    )


def remove_tenant(session: Session, *, name: str, purge: bool) -> int:
    """Delete a tenant; its media rows too when ``purge``. Return how many rows went."""
    tenant = get_tenant(session, name=name)
    count = session.exec(
        select(func.count()).select_from(Media).where(Media.tenant_id == tenant.id)
    ).one()
    if count and not purge:
        raise Conflict(
            f"tenant {name!r} has {count} media rows; pass --purge to delete them too "
            "(objects in the bucket are left alone)"
        )
    session.execute(delete(Media).where(col(Media.tenant_id) == tenant.id))
    session.execute(delete(ApiKey).where(col(ApiKey.tenant_id) == tenant.id))
    session.delete(tenant)
    session.flush()
    return int(count)


def rotate_hmac_key(
    session: Session, *, box: SecretBox, name: str, new_key: str, previous_valid_for: timedelta
) -> Tenant:
    """Make ``new_key`` the webhook key; the current one keeps verifying for a while."""
    if len(new_key) < 8:
        raise PayloadError("hmac-key must be at least 8 characters")
    tenant = get_tenant(session, name=name)
    if box.decrypt(tenant.hmac_key_enc) == new_key:
        raise Conflict("that is already the tenant's webhook key")
    tenant.hmac_key_previous_enc = (
        tenant.hmac_key_enc if previous_valid_for > timedelta(0) else None
    )
    tenant.hmac_key_previous_expires_at = (
        utcnow() + previous_valid_for if previous_valid_for > timedelta(0) else None
    )
    tenant.hmac_key_enc = box.encrypt(new_key)
    session.add(tenant)
    session.flush()
    return tenant


@dataclass(frozen=True)
class PolicyChanges:
    """What a tenant captures, keeps and tells (None leaves a setting as it is)."""

    capture_outgoing: bool | None = None
    capture_status: bool | None = None
    capture_groups: bool | None = None
    capture_types: str | None = None  # "image,video"; "" for every type
    capture_max_bytes: int | None = None  # 0: no cap
    delete_revoked: bool | None = None
    renditions: bool | None = None
    retention_days: int | None = None  # 0: kept forever
    notify_url: str | None = None  # "": no notifications
    notify_secret: str | None = None  # whsec_...; a new one is made when a URL is first set
    object_lock: str | None = None  # governance, compliance, or off
    lock_days: int | None = None  # retention of each object written, with object_lock

    def any(self) -> bool:
        return any(value is not None for value in self.__dict__.values())


def update_policy(
    session: Session, *, box: SecretBox, tenant: Tenant, changes: PolicyChanges
) -> str | None:
    """Apply ``changes`` to ``tenant``; return a notification secret made for it (shown
    once), else None. PayloadError names the first unusable value."""
    from archiver.media.capture import format_types, parse_types
    from archiver.tenants.notify import new_secret, secret_bytes

    if changes.capture_types is not None:
        tenant.capture_types = format_types(parse_types(changes.capture_types))
    if changes.capture_max_bytes is not None:
        if changes.capture_max_bytes < 0:
            raise PayloadError("capture-max-size must be positive (0: no cap)")
        tenant.capture_max_bytes = changes.capture_max_bytes or None
    if changes.retention_days is not None:
        if not 0 <= changes.retention_days <= 36500:
            raise PayloadError("retention-days must be between 1 and 36500 (0: kept forever)")
        tenant.retention_days = changes.retention_days or None
    _object_lock(tenant, changes.object_lock, changes.lock_days)
    toggles = (
        "capture_outgoing",
        "capture_status",
        "capture_groups",
        "delete_revoked",
        "renditions",
    )
    for name in toggles:
        value = getattr(changes, name)
        if value is not None:
            setattr(tenant, name, value)
    made: str | None = None
    if changes.notify_secret is not None:
        try:
            secret_bytes(changes.notify_secret)
        except ValueError as exc:
            raise PayloadError(f"notify-secret: {exc}") from exc
        tenant.notify_secret_enc = box.encrypt(changes.notify_secret)
    if changes.notify_url is not None:
        url = changes.notify_url.strip()
        if url and (urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).netloc):
            raise PayloadError("notify-url must be an http(s) URL")
        tenant.notify_url = url or None
        if url and tenant.notify_secret_enc is None:
            made = new_secret()
            tenant.notify_secret_enc = box.encrypt(made)
    session.add(tenant)
    session.flush()
    return made


LOCK_MODES = ("governance", "compliance")


def _object_lock(tenant: Tenant, mode: str | None, days: int | None) -> None:
    """The tenant's Object Lock settings: a mode needs a number of days; off clears both."""
    if mode == "off":
        if days is not None:
            raise PayloadError("lock-days: not with --object-lock off")
        tenant.object_lock_mode = tenant.object_lock_days = None
        return
    if mode is not None and mode not in LOCK_MODES:
        raise PayloadError("object-lock must be governance, compliance or off")
    if days is not None and not 1 <= days <= 36500:
        raise PayloadError("lock-days must be between 1 and 36500")
    mode = mode or tenant.object_lock_mode
    days = days or tenant.object_lock_days
    if mode is None and days is not None:
        raise PayloadError("lock-days: say the mode too (--object-lock governance|compliance)")
    if mode is not None and days is None:
        raise PayloadError("object-lock: say for how long (--lock-days N)")
    tenant.object_lock_mode, tenant.object_lock_days = mode, days


_ENCRYPTED = (
    "hmac_key_enc",
    "hmac_key_previous_enc",
    "titan_api_key_enc",
    "s3_secret_enc",
    "notify_secret_enc",
)


@dataclass(frozen=True)
class RekeyReport:
    tenants: int
    secrets: int  # stored secrets examined
    reencrypted: int  # of those, re-encrypted because an older key had encrypted them


def rekey_secrets(session: Session, *, box: SecretBox, dry_run: bool = False) -> RekeyReport:
    """Re-encrypt every stored tenant secret under the current master key.

    Each is decrypted with whichever known key encrypted it, so processes still on the old
    key keep working until they restart with the new one. A secret no known key opens stops
    the run (ConfigError) before anything changes.
    """
    tenants = list_tenants(session)
    count = reencrypted = 0
    for tenant in tenants:
        for column in _ENCRYPTED:
            token = getattr(tenant, column)
            if not token:
                continue
            count += 1
            if box.is_current(token):
                continue
            rotated = box.rotate(token)
            reencrypted += 1
            if not dry_run:
                setattr(tenant, column, rotated)
        session.add(tenant)
    if dry_run:
        session.rollback()
    else:
        session.flush()
    return RekeyReport(tenants=len(tenants), secrets=count, reencrypted=reencrypted)


def secrets_of(tenant: Tenant, *, box: SecretBox) -> TenantSecrets:
    keys = [box.decrypt(tenant.hmac_key_enc)]
    expires = tenant.hmac_key_previous_expires_at
    if tenant.hmac_key_previous_enc and expires is not None and expires > utcnow():
        keys.append(box.decrypt(tenant.hmac_key_previous_enc))
    return TenantSecrets(
        hmac_keys=tuple(keys),
        titan_api_key=box.decrypt(tenant.titan_api_key_enc),
        s3_secret_access_key=box.decrypt(tenant.s3_secret_enc) if tenant.s3_secret_enc else None,
    )
