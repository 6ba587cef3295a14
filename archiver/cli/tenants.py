"""`titan-archiver tenants`: add, connect to Titan, check, list, show, rotate the webhook key
of, and remove tenants."""

from __future__ import annotations

import json
import secrets
import sys
from datetime import timedelta
from typing import Any

import click

from archiver.cli.context import confirm_destructive, current_settings, database, friendly
from archiver.cli.output import echo_json
from archiver.cli.secret_input import read_secret, secret_option
from archiver.errors import AppError, ConfigError, Conflict
from archiver.governance import audit
from archiver.media.capture import CapturePolicy
from archiver.media.shapes import TenantView
from archiver.names import SESSION_RE
from archiver.scheduling import pauses
from archiver.settings import Settings
from archiver.tables import utcnow
from archiver.tenants import webhooks
from archiver.tenants.preflight import Finding, check_tenant, lock_problem
from archiver.tenants.tenants import (
    LOCK_MODES,
    PolicyChanges,
    TenantChanges,
    TenantSpec,
    count_rows,
    create_tenant,
    get_tenant,
    list_tenants,
    remove_tenant,
    rotate_hmac_key,
    secrets_of,
    tenant_exists,
    update_policy,
    update_tenant,
    updated_spec,
    validate_settings,
    validate_spec,
)


@click.group()
def tenants() -> None:
    """Tenants: the Titan accounts whose media is archived."""


def _check(spec: TenantSpec, settings: Settings) -> None:
    """Run the preflight; print each finding to stderr; raise if any failed."""
    findings = check_tenant(spec, settings)
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        click.echo(f"{mark} {finding.check}: {finding.detail}", err=True)
    failed = [f.check for f in findings if not f.ok]
    if failed:
        raise click.ClickException(
            f"tenant {spec.name!r} failed its checks ({', '.join(failed)}); nothing was "
            "changed. Fix the settings, or pass --no-check to store them anyway"
        )


def _object_lock_options(func: Any) -> Any:
    """--object-lock and --lock-days: S3 Object Lock (WORM) for every object written."""
    func = click.option(
        "--lock-days",
        type=click.IntRange(1, 36500),
        default=None,
        help="Days each object is retained under --object-lock.",
    )(func)
    return click.option(
        "--object-lock",
        type=click.Choice(["governance", "compliance", "off"]),
        default=None,
        help="Write every object with S3 Object Lock retention (the bucket must have Object "
        "Lock enabled); compliance: nobody can delete a retained version before its date.",
    )(func)


def _check_lock(spec: TenantSpec, settings: Settings) -> None:
    """A tenant that locks its objects needs a bucket with Object Lock enabled."""
    problem = lock_problem(spec, settings)
    mark = "FAIL" if problem else "ok  "
    click.echo(
        f"{mark} object lock: {problem or 'enabled on bucket ' + repr(spec.s3_bucket)}", err=True
    )
    if problem:
        raise click.ClickException(f"{problem}; nothing was changed")


_previous_valid_for = click.option(
    "--previous-valid-for",
    default=24.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Hours the tenant's current webhook key keeps verifying (0: stop at once).",
)


@tenants.command("add")
@click.argument("name")
@secret_option("--hmac-key", help="The Titan webhook's signing key (hmacKey).")
@click.option("--titan-url", required=True, help="The Titan account's API base URL.")
@secret_option("--titan-api-key", help="A Titan server API key (titan_...).")
@click.option(
    "--strategy", type=click.Choice(["download", "persist"]), default="download", show_default=True
)
@click.option("--s3-bucket", required=True)
@click.option("--s3-endpoint", default="", help="Blank for AWS S3; the URL for R2 or MinIO.")
@click.option("--s3-region", default="")
@click.option("--s3-access-key-id", default="")
@secret_option("--s3-secret-access-key", help="The bucket credentials' secret.")
@click.option("--s3-prefix", default="", help="Key prefix inside the bucket.")
@click.option(
    "--s3-ca-bundle",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM file of the CA that signed the S3 endpoint's certificate (a private CA).",
)
@_object_lock_options
@click.option("--no-check", is_flag=True, help="Store without checking Titan and the bucket.")
@friendly
def tenants_add(name: str, no_check: bool, **options: Any) -> None:
    """Add a tenant; print it with a fresh query API key (shown only this once).

    Before storing it, checks that Titan accepts the API key and that the bucket takes the
    writes the worker makes (tenants check), unless --no-check.
    """
    stdin: list[str] = []
    hmac_key = read_secret("--hmac-key", options, stdin_used=stdin)
    titan_api_key = read_secret("--titan-api-key", options, stdin_used=stdin)
    s3_secret = read_secret("--s3-secret-access-key", options, stdin_used=stdin)
    if hmac_key is None:
        raise click.UsageError(
            "give the webhook key: --hmac-key, --hmac-key-file or --hmac-key-env"
        )
    if titan_api_key is None:
        raise click.UsageError(
            "give the Titan API key: --titan-api-key, --titan-api-key-file or --titan-api-key-env"
        )
    lock = PolicyChanges(object_lock=options.pop("object_lock"), lock_days=options.pop("lock_days"))
    bundle = options.pop("s3_ca_bundle")
    spec = TenantSpec(
        name=name,
        hmac_key=hmac_key,
        titan_api_key=titan_api_key,
        s3_secret_access_key=s3_secret or "",
        s3_ca_bundle=_read_bundle(bundle),
        **options,
    )
    settings = current_settings()
    validate_spec(spec)
    with database() as session:
        if tenant_exists(session, name=name):
            raise Conflict(f"tenant {name!r} already exists")
    if not no_check:
        _check(spec, settings)
        if lock.object_lock not in (None, "off"):
            _check_lock(spec, settings)
    with database() as session:
        tenant, api_key = create_tenant(session, box=settings.secret_box(), spec=spec)
        if lock.any():
            update_policy(session, box=settings.secret_box(), tenant=tenant, changes=lock)
        audit.record_cli(
            session,
            "tenant.add",
            tenant_id=tenant.id,
            tenant=name,
            detail={"strategy": spec.strategy, "bucket": spec.s3_bucket, "checked": not no_check},
        )
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps({"name": name, "apiKey": api_key, **view}))


@tenants.command("update")
@click.argument("name")
@click.option("--titan-url", default=None, help="The Titan account's API base URL.")
@secret_option("--titan-api-key", help="A new Titan server API key (titan_...).")
@click.option("--strategy", type=click.Choice(["download", "persist"]), default=None)
@click.option("--s3-bucket", default=None)
@click.option("--s3-endpoint", default=None, help="'' for AWS S3; the URL for R2 or MinIO.")
@click.option("--s3-region", default=None)
@click.option("--s3-access-key-id", default=None)
@secret_option("--s3-secret-access-key", help="The bucket credentials' secret ('' clears it).")
@click.option("--s3-prefix", default=None, help="Key prefix inside the bucket (new objects).")
@click.option(
    "--s3-ca-bundle",
    default=None,
    help="PEM file of the CA that signed the S3 endpoint's certificate ('' : system CAs).",
)
@click.option(
    "--capture-outgoing/--no-capture-outgoing",
    default=None,
    help="Archive media the tenant's own number sends (message.sent). Default: off.",
)
@click.option(
    "--capture-status/--no-capture-status",
    default=None,
    help="Archive status (stories, status@broadcast) media. Default: on.",
)
@click.option(
    "--capture-groups/--no-capture-groups", default=None, help="Archive group media. Default: on."
)
@click.option(
    "--capture-types",
    default=None,
    help="Only these types, comma-separated (image,video,audio,document,sticker); '' for all.",
)
@click.option(
    "--capture-max-size",
    default=None,
    help="Leave out media announced larger than this (bytes, or 50MB, 2GB); 0 for no cap.",
)
@click.option(
    "--delete-revoked/--keep-revoked",
    default=None,
    help="Erase the object and row of a message its sender revoked or deleted. Default: keep.",
)
@click.option(
    "--renditions/--no-renditions",
    default=None,
    help="Make thumbnails, video posters, durations and m4a audio after archiving. Default: on.",
)
@click.option(
    "--retention-days",
    type=click.IntRange(0, 36500),
    default=None,
    help="Delete rows and objects older than this many days (0: keep forever).",
)
@click.option(
    "--notify-url",
    default=None,
    help="POST signed media.archived / media.failed events here ('' turns them off).",
)
@secret_option("--notify-secret", help="The events' signing secret (whsec_...; made if absent).")
@_object_lock_options
@click.option("--no-check", is_flag=True, help="Store without checking Titan and the bucket.")
@friendly
def tenants_update(name: str, no_check: bool, **options: Any) -> None:
    """Change a tenant's settings; only the options given change.

    New Titan or bucket settings are checked as on add before anything is stored (unless
    --no-check). Receivers and workers use them within seconds; objects already archived
    stay where they are (their rows keep their bucket and key). The webhook key changes
    with rotate-hmac-key. When a notification URL is first set, a signing secret is made
    and printed once (notifySecret), unless --notify-secret gives one.
    """
    stdin: list[str] = []
    policy = PolicyChanges(
        capture_outgoing=options.pop("capture_outgoing"),
        capture_status=options.pop("capture_status"),
        capture_groups=options.pop("capture_groups"),
        capture_types=options.pop("capture_types"),
        capture_max_bytes=_size(options.pop("capture_max_size")),
        delete_revoked=options.pop("delete_revoked"),
        renditions=options.pop("renditions"),
        retention_days=options.pop("retention_days"),
        notify_url=options.pop("notify_url"),
        notify_secret=read_secret("--notify-secret", options, stdin_used=stdin),
        object_lock=options.pop("object_lock"),
        lock_days=options.pop("lock_days"),
    )
    bundle = options.pop("s3_ca_bundle")
    options["s3_ca_bundle"] = "" if bundle == "" else _read_bundle(bundle)
    changes = TenantChanges(
        titan_api_key=read_secret("--titan-api-key", options, stdin_used=stdin),
        s3_secret_access_key=read_secret("--s3-secret-access-key", options, stdin_used=stdin),
        **options,
    )
    if not changes.any() and not policy.any():
        raise click.ClickException("nothing to update: name at least one setting to change")
    settings = current_settings()
    box = settings.secret_box()
    locking = policy.object_lock in LOCK_MODES
    if (changes.any() or locking) and not no_check:
        # Checked before the write transaction opens: a slow bucket must not hold the
        # database (on SQLite, every webhook) while it answers.
        with database() as session:
            tenant = get_tenant(session, name=name)
            spec = updated_spec(tenant, secrets_of(tenant, box=box), changes)
            locking = locking or tenant.object_lock_mode is not None
        validate_settings(spec)
        if changes.any():
            _check(spec, settings)
        if locking:
            _check_lock(spec, settings)
    made: str | None = None
    with database() as session:
        if changes.any():
            tenant, _ = update_tenant(session, box=box, name=name, changes=changes)
        else:
            tenant = get_tenant(session, name=name)
        if policy.any():
            made = update_policy(session, box=box, tenant=tenant, changes=policy)
        audit.record_cli(
            session,
            "tenant.update",
            tenant_id=tenant.id,
            tenant=name,
            detail={"changed": _changed(changes, policy)},
        )
        view = TenantView.of(tenant).doc()
    if made is not None:
        view["notifySecret"] = made  # shown this once; stored encrypted
    click.echo(json.dumps(view))


def _read_bundle(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--s3-ca-bundle") from exc


_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def _size(text: str | None) -> int | None:
    """Bytes from "52428800", "50MB" or "2 GB" (binary units); None stays None."""
    if text is None:
        return None
    cleaned = text.strip().upper().replace(" ", "")
    digits = cleaned.rstrip("KMGB")
    unit = cleaned[len(digits) :]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise click.BadParameter(f"{text!r} is not a size (bytes, or 50MB, 2GB)")
    return int(digits) * _SIZE_UNITS[unit]


def _changed(*changes: TenantChanges | PolicyChanges) -> list[str]:
    """The names of the settings an update changed (never their values: some are secret)."""
    return sorted(
        name.replace("_", "-")
        for change in changes
        for name, value in change.__dict__.items()
        if value is not None
    )


def _check_webhook(
    spec: TenantSpec, webhook_id: str | None, url: str, events: list[str], settings: Settings
) -> Finding:
    """The webhook `tenants connect` registered: still at Titan, enabled, pointing here."""
    timeout = min(settings.titan_connect_timeout, 10.0)
    try:
        with webhooks.TitanWebhooks(spec.titan_url, spec.titan_api_key, timeout=timeout) as titan:
            problem = webhooks.verify(titan, webhook_id=webhook_id, url=url, events=events)
    except AppError as exc:
        return Finding("webhook", False, f"could not list Titan's webhooks: {exc}")
    if problem:
        return Finding("webhook", False, problem)
    return Finding("webhook", True, f"Titan posts {len(events)} event types to {url}")


@tenants.command("check")
@click.argument("name")
@friendly
def tenants_check(name: str) -> None:
    """Check a tenant's settings: Titan accepts its API key; its bucket takes a put, read,
    delete and multipart upload of a probe object; with --object-lock, the bucket has Object
    Lock enabled; once connected, Titan's webhook points here. One JSON line per check; exit
    1 if any failed."""
    settings = current_settings()
    with database() as session:
        tenant = get_tenant(session, name=name)
        spec = updated_spec(tenant, secrets_of(tenant, box=settings.secret_box()), TenantChanges())
        connected = (tenant.titan_webhook_id, tenant.webhook_url)
        events = webhooks.events_for(CapturePolicy.of(tenant))
        locked = tenant.object_lock_mode
    findings = check_tenant(spec, settings)
    if locked:
        problem = lock_problem(spec, settings)
        detail = problem or f"Object Lock enabled on bucket {spec.s3_bucket!r} ({locked})"
        findings.append(Finding("object lock", problem is None, detail))
    if connected[1]:
        findings.append(_check_webhook(spec, connected[0], connected[1], events, settings))
    for finding in findings:
        click.echo(json.dumps({"check": finding.check, "ok": finding.ok, "detail": finding.detail}))
    if not all(f.ok for f in findings):
        sys.exit(1)


@tenants.command("connect")
@click.argument("name")
@click.option(
    "--public-url",
    required=True,
    help="Where Titan reaches this archiver (https://...); the webhook is {URL}/webhooks/NAME.",
)
@click.option("--session", "session_name", default=None, help="Only this Titan session's events.")
@_previous_valid_for
@friendly
def tenants_connect(
    name: str, public_url: str, session_name: str | None, previous_valid_for: float
) -> None:
    """Register the archiver's webhook with Titan for this tenant: the events its capture
    policy needs, signed with a new generated key (stored encrypted; the old one verifies
    for --previous-valid-for hours). Run again to repair it: the webhook pointing here is
    updated, never duplicated. Prints the webhook as Titan has it."""
    if session_name is not None and not SESSION_RE.match(session_name):
        raise click.BadParameter("not a Titan session name", param_hint="--session")
    try:
        url = webhooks.webhook_url(public_url, name)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-url") from exc
    settings = current_settings()
    box = settings.secret_box()
    hmac_key = secrets.token_urlsafe(32)
    with database() as session:
        tenant = get_tenant(session, name=name)
        titan_url, titan_key = tenant.titan_url, secrets_of(tenant, box=box).titan_api_key
        events = webhooks.events_for(CapturePolicy.of(tenant))
        # Stored first: until Titan has the new key, deliveries signed with the old one
        # still verify (it stays valid as the previous key).
        rotate_hmac_key(
            session,
            box=box,
            name=name,
            new_key=hmac_key,
            previous_valid_for=timedelta(hours=previous_valid_for),
        )
    timeout = min(settings.titan_connect_timeout, 10.0)
    try:
        with webhooks.TitanWebhooks(titan_url, titan_key, timeout=timeout) as titan:
            webhook = webhooks.connect(
                titan, url=url, events=events, hmac_key=hmac_key, session=session_name
            )
    except AppError as exc:
        raise click.ClickException(
            f"{exc}. The tenant's new webhook key is stored and the old one still verifies "
            f"for {previous_valid_for:g} h: run this command again once Titan answers"
        ) from exc
    with database() as session:
        tenant = get_tenant(session, name=name)
        tenant.titan_webhook_id, tenant.webhook_url = webhook.id, url
        session.add(tenant)
        audit.record_cli(
            session,
            "tenant.connect",
            tenant_id=tenant.id,
            tenant=name,
            detail={"webhook": webhook.id, "url": url, "events": events},
        )
    click.echo(json.dumps({"tenant": name, "webhook": webhook.doc()}))


@tenants.command("pause")
@click.argument("name")
@click.option("--reason", default="paused by an operator", show_default=True)
@friendly
def tenants_pause(name: str, reason: str) -> None:
    """Stop working on a tenant's media; its rows keep their place until it is resumed."""
    with database() as session:
        tenant = get_tenant(session, name=name)
        pauses.pause(session, tenant_id=tenant.saved_id, reason=reason, now=utcnow(), auto=False)
        audit.record_cli(
            session,
            "tenant.pause",
            tenant_id=tenant.id,
            tenant=name,
            detail={"reason": reason},
        )
        session.refresh(tenant)
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps(view))


@tenants.command("resume")
@click.argument("name")
@friendly
def tenants_resume(name: str) -> None:
    """Work on a paused tenant's media again; its waiting rows go out within seconds."""
    with database() as session:
        tenant = get_tenant(session, name=name)
        was_paused = pauses.resume(session, tenant_id=tenant.saved_id)
        if was_paused:
            audit.record_cli(
                session,
                "tenant.resume",
                tenant_id=tenant.id,
                tenant=name,
            )
        session.refresh(tenant)
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps(view))
    if not was_paused:
        click.echo(f"tenant {name} was not paused", err=True)


@tenants.command("list")
@friendly
def tenants_list() -> None:
    """List tenants (secrets masked), one JSON object per line."""
    with database() as session:
        for tenant in list_tenants(session):
            click.echo(json.dumps(TenantView.of(tenant).doc()))


@tenants.command("show")
@click.argument("name")
@friendly
def tenants_show(name: str) -> None:
    """Show one tenant (secrets masked)."""
    with database() as session:
        echo_json(TenantView.of(get_tenant(session, name=name)).doc())


@tenants.command("rotate-hmac-key")
@click.argument("name")
@secret_option("--hmac-key", help="The webhook's new signing key.")
@_previous_valid_for
@friendly
def tenants_rotate_hmac_key(name: str, previous_valid_for: float, **options: Any) -> None:
    """Switch the tenant to a new webhook key; signatures by the old one verify until it expires.

    Receivers pick the change up within 5 seconds (their tenant cache).
    """
    hmac_key = read_secret("--hmac-key", options)
    if hmac_key is None:
        raise click.UsageError("give the new key: --hmac-key, --hmac-key-file or --hmac-key-env")
    box = current_settings().secret_box()
    with database() as session:
        tenant = rotate_hmac_key(
            session,
            box=box,
            name=name,
            new_key=hmac_key,
            previous_valid_for=timedelta(hours=previous_valid_for),
        )
        audit.record_cli(
            session,
            "tenant.rotate-hmac-key",
            tenant_id=tenant.id,
            tenant=name,
            detail={"previousValidForHours": previous_valid_for},
        )
        view = TenantView.of(tenant).doc()
    click.echo(json.dumps(view))


@tenants.command("remove")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the tenant's media rows.")
@click.option("--yes", is_flag=True, help="Do not ask (needed when no terminal is attached).")
@friendly
def tenants_remove(name: str, purge: bool, yes: bool) -> None:
    """Remove a tenant: asked first at a terminal, else only with --yes. Objects in its
    bucket are never touched. With --purge its media rows go too."""
    with database() as session:
        get_tenant(session, name=name)  # an unknown name fails before anything is asked
        rows = count_rows(session, name=name)
    what = f"remove tenant {name}" + (f" and delete its {rows} media rows" if purge else "")
    confirm_destructive(what, yes=yes)
    with database() as session:
        tenant_id = get_tenant(session, name=name).id
        rows = remove_tenant(session, name=name, purge=purge)
        audit.record_cli(
            session,
            "tenant.remove",
            tenant_id=tenant_id,
            tenant=name,
            detail={"purge": purge, "rows": rows},
        )
    click.echo(f"removed tenant {name} ({rows} media rows deleted)", err=True)
