"""The public JSON shapes: one pydantic model per answer of the HTTP API and per object the CLI
prints, used both to serialize them and to generate ``/openapi.json`` (receiver/openapi.py).

Field names are Python's; each JSON name is its alias (``messageId``). Times are UTC and
written as RFC 3339 with ``Z``, except a tenant's, which keep the ``+00:00`` form they always
had. Nullable fields are always present (``null``), so every field is required in the schema.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Final, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from archiver.media import renditions as derived
from archiver.tables import ApiKey, ExportJob, Media, Status, Tenant

MASK: Final = "********"
StrategyName = Literal["download", "persist", "auto"]  # auto: Titan persisted it on its own

# A tenant's times have always been Python's isoformat (``+00:00``); the rest use ``Z``.
OffsetTime = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str)]


class Shape(BaseModel):
    """Base of every public shape: frozen, built from Python names, written with aliases."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, use_enum_values=True)

    def to_json(self) -> bytes:
        """The compact JSON an HTTP answer carries."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def doc(self) -> dict[str, Any]:
        """The JSON object as Python values (for the CLI's ``json.dumps`` and CSV)."""
        return self.model_dump(mode="json", by_alias=True)


class RenditionInfo(Shape):
    """One derived file of a media item, kept in the tenant's bucket beside the original."""

    kind: Literal["thumbnail", "audio"]
    mime_type: str = Field(alias="mimeType")
    size: int


RenderStateName = Literal["pending", "done", "failed", "off"]


class MediaInfo(Shape):
    """Titan's MediaInfo fields plus the archive's own, for one media row."""

    id: str = Field(description="Titan's mediaId")
    message_id: str | None = Field(alias="messageId")
    mime_type: str | None = Field(alias="mimeType")
    file_length: int | None = Field(alias="fileLength")
    persisted: bool
    s3_url: str | None = Field(
        alias="s3Url", description="s3://bucket/key, or Titan's URL; not a link"
    )
    session: str
    tenant: str
    bucket: str | None
    key: str | None
    sha256: str | None
    size: int | None
    type: str
    sender: str | None
    sender_lid: str | None = Field(alias="senderLid")
    caption: str | None
    filename: str | None
    event_id: str | None = Field(alias="eventId")
    strategy: StrategyName
    status: Status
    attempts: int
    last_error: str | None = Field(alias="lastError")
    received_at: datetime = Field(alias="receivedAt")
    message_at: datetime | None = Field(alias="messageAt")
    archived_at: datetime | None = Field(alias="archivedAt")
    voice_note: bool = Field(alias="voiceNote", description="Sent as a voice note (type audio)")
    chat: str | None = Field(
        description="The conversation: the group's id, or the contact of a one-to-one chat"
    )
    is_group: bool | None = Field(alias="isGroup")
    from_me: bool | None = Field(alias="fromMe", description="Sent by the business's own number")
    sender_name: str | None = Field(alias="senderName", description="The sender's pushName")
    width: int | None = Field(
        description="Pixels across, as shown (image, sticker, video), once rendered"
    )
    height: int | None = Field(description="Pixels down, as shown")
    duration_seconds: float | None = Field(
        alias="durationSeconds", description="Length of a video or audio file"
    )
    pages: int | None = Field(description="Pages of a PDF")
    renditions: list[RenditionInfo] = Field(
        description="Derived files beside the original: thumbnail (image/webp: an image's, a "
        "video's poster frame, a PDF's first page) and audio (audio/mp4: AAC of an Ogg voice "
        "note); GET .../thumbnail or .../content?rendition=KIND redirects to one",
    )

    render_state: RenderStateName | None = Field(
        alias="renderState",
        description="Where the renditions stand once the file is archived: pending (asked, "
        "not made yet), done, failed (renderError says why; the archive stands) or off (never "
        "asked: renditions off for the tenant, or archived before they existed; `media render "
        "--missing` asks). Null until the file is archived",
    )
    render_error: str | None = Field(
        alias="renderError", description="Why the renditions failed (renderState failed)"
    )
    verified_at: datetime | None = Field(
        alias="verifiedAt",
        description="When the stored bytes were last shown to be the archived ones: hashed on "
        "the way in (every part checked by the bucket), read back after Titan persisted them, "
        "or re-read by a fixity audit",
    )

    @classmethod
    def of(cls, row: Media, *, tenant: str) -> MediaInfo:
        assert row.received_at is not None
        return cls(
            id=row.media_id,
            message_id=row.message_id,
            mime_type=row.mime_type,
            file_length=row.file_length,
            persisted=row.persisted,
            s3_url=row.s3_url if row.persisted else None,
            session=row.session,
            tenant=tenant,
            bucket=row.bucket,
            key=row.object_key,
            sha256=row.sha256,
            size=row.size,
            type=row.message_type,
            sender=row.sender,
            sender_lid=row.sender_lid,
            caption=row.caption,
            filename=row.filename,
            event_id=row.event_id,
            strategy=cast(StrategyName, row.strategy),
            status=Status(row.status),
            attempts=row.attempts,
            last_error=row.last_error,
            received_at=row.received_at,
            message_at=row.message_at,
            archived_at=row.archived_at,
            chat=row.chat,
            is_group=row.is_group,
            from_me=row.from_me,
            sender_name=row.sender_name,
            voice_note=row.voice_note,
            width=row.width,
            height=row.height,
            duration_seconds=row.duration_seconds,
            pages=row.pages,
            renditions=[RenditionInfo(**r) for r in derived.public(row.renditions)],
            render_state=_render_state(row),
            render_error=row.render_error if row.render_state == "failed" else None,
            verified_at=row.verified_at,
        )


def _render_state(row: Media) -> RenderStateName | None:
    if row.render_state in ("pending", "done", "failed"):
        return cast(RenderStateName, row.render_state)
    return "off" if row.status == Status.ARCHIVED.value else None


def media_info(row: Media, *, tenant: str) -> dict[str, Any]:
    """One row's MediaInfo as a JSON object (CLI output, dashboard detail)."""
    return MediaInfo.of(row, tenant=tenant).doc()


# The CLI's CSV columns: MediaInfo's JSON names, in order.
MEDIA_INFO_COLUMNS = [field.alias or name for name, field in MediaInfo.model_fields.items()]


class MediaPage(Shape):
    """One page of ``GET /api/media``; pass ``nextCursor`` as ``cursor`` for the next."""

    data: list[MediaInfo]
    next_cursor: str | None = Field(alias="nextCursor")


class OneMedia(Shape):
    """``GET /api/media/{id}``."""

    data: MediaInfo


class Counts(Shape):
    count: int
    size: int = Field(alias="bytes")


class PausedTenant(Shape):
    """A tenant whose media waits: Titan or its bucket refused its settings (``auto``), or an
    operator paused it. Fix it with ``tenants update``; ``tenants resume`` resumes it."""

    tenant: str
    reason: str
    since: datetime
    auto: bool


class PausedSession(Shape):
    """A session Titan reported logged out or banned: its media waits until Titan reports it
    connected again."""

    tenant: str
    session: str
    reason: str
    since: datetime


class Stats(Shape):
    by_status: dict[str, Counts] = Field(alias="byStatus")
    by_type: dict[str, Counts] = Field(alias="byType")
    oldest_unarchived_age_seconds: float | None = Field(alias="oldestUnarchivedAgeSeconds")
    paused_tenants: list[PausedTenant] = Field(alias="pausedTenants")
    paused_sessions: list[PausedSession] = Field(alias="pausedSessions")


class StatsAnswer(Shape):
    """``GET /api/stats``: rows and bytes by status and by type; the oldest unarchived age."""

    data: Stats


class Error(Shape):
    """Every error answer of the HTTP API."""

    error: str


class WebhookAnswer(Shape):
    """A media event's delivery: recorded (202: queued, or archived by Titan itself) or a
    duplicate of one already recorded (200)."""

    status: Literal["queued", "archived", "duplicate"]
    id: str = Field(description="The media id")

    @staticmethod
    def json_of(status: Literal["queued", "archived", "duplicate"], media_id: str) -> bytes:
        """``WebhookAnswer(status=..., id=...).to_json()`` without building the model: the
        answer to every webhook (a tenth of the cost; tests/test_webhook_paths.py holds them
        equal)."""
        return orjson.dumps({"status": status, "id": media_id})


class Ignored(Shape):
    """A delivery of an event that is not archived (other events, text messages, a
    revocation of a message never archived): 200."""

    status: Literal["ignored"]


class NotCaptured(Shape):
    """A media event the tenant's capture policy leaves out: 200, counted. ``reason``:
    ``outgoing`` (message.sent, or fromMe), ``status`` (status@broadcast), ``group``,
    ``type`` (not in the allow-list), ``size`` (announced larger than the cap)."""

    status: Literal["ignored"]
    reason: Literal["outgoing", "status", "group", "type", "size"]


class Revoked(Shape):
    """``message.revoked`` / ``message.delete`` of an archived message: the fact is recorded
    on its rows (``media``: how many), 200. The objects stay unless the tenant erases
    revoked media."""

    status: Literal["revoked"]
    message_id: str = Field(alias="messageId")
    media: int


class SessionState(Shape):
    """A session event that holds or releases the session's media: ``session.logged_out``,
    or ``session.status`` DISCONNECTED for LOGGED_OUT / TEMPORARY_BAN (paused), CONNECTED
    (resumed). 200."""

    status: Literal["paused", "resumed"]
    session: str


class Readiness(Shape):
    """``GET /readyz``: 200 when the database and the broker both answer, else 503."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, Literal["ok", "down"]]
    # Why each check that is down is down (the schema not migrated, a refused connection).
    reasons: dict[str, str] = Field(default_factory=dict)


class Health(Shape):
    """``GET /healthz``: the process is up."""

    status: Literal["ok"]


class ApiKeyView(Shape):
    """What may be shown about a query API key: never its hash or plaintext."""

    id: int | None
    tenant: str
    prefix: str
    label: str | None
    created_at: datetime | None = Field(alias="createdAt")
    last_used_at: datetime | None = Field(alias="lastUsedAt")
    revoked_at: datetime | None = Field(alias="revokedAt")

    @classmethod
    def of(cls, key: ApiKey, *, tenant: str) -> ApiKeyView:
        return cls(
            id=key.id,
            tenant=tenant,
            prefix=key.prefix,
            label=key.label,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class TenantView(Shape):
    """A tenant as operators may see it: no secret, only whether each is set."""

    name: str
    titan_url: str = Field(alias="titanUrl")
    strategy: str
    s3_bucket: str = Field(alias="s3Bucket")
    s3_endpoint: str | None = Field(alias="s3Endpoint")
    s3_region: str | None = Field(alias="s3Region")
    s3_access_key_id: str | None = Field(alias="s3AccessKeyId")
    s3_prefix: str = Field(alias="s3Prefix")
    s3_ca_bundle: int | None = Field(
        alias="s3CaBundle",
        description="Certificates in the tenant's own CA bundle for its S3 endpoint (null: none)",
    )
    hmac_key: Literal["********"] = Field(default=MASK, alias="hmacKey")
    previous_hmac_key_expires_at: OffsetTime | None = Field(alias="previousHmacKeyExpiresAt")
    titan_api_key: Literal["********"] = Field(default=MASK, alias="titanApiKey")
    s3_secret_access_key: Literal["********"] | None = Field(alias="s3SecretAccessKey")
    created_at: OffsetTime | None = Field(alias="createdAt")
    paused_at: OffsetTime | None = Field(alias="pausedAt", description="Paused since (null: not)")
    paused_reason: str | None = Field(alias="pausedReason")
    capture_outgoing: bool = Field(alias="captureOutgoing")
    capture_status: bool = Field(alias="captureStatus")
    capture_groups: bool = Field(alias="captureGroups")
    capture_types: list[str] | None = Field(alias="captureTypes", description="null: every type")
    capture_max_bytes: int | None = Field(alias="captureMaxBytes")
    delete_revoked: bool = Field(alias="deleteRevoked")
    renditions: bool = Field(
        description="Thumbnails, posters, durations and m4a audio are made after archiving"
    )
    retention_days: int | None = Field(alias="retentionDays", description="null: kept forever")
    object_lock: Literal["governance", "compliance"] | None = Field(
        alias="objectLock",
        description="S3 Object Lock mode every object is written with (null: off)",
    )
    lock_days: int | None = Field(
        alias="lockDays", description="Days each object is retained under objectLock"
    )
    notify_url: str | None = Field(alias="notifyUrl")
    notify_secret: Literal["********"] | None = Field(alias="notifySecret")

    @classmethod
    def of(cls, tenant: Tenant) -> TenantView:
        previous = tenant.hmac_key_previous_expires_at
        return cls(
            name=tenant.name,
            titan_url=tenant.titan_url,
            strategy=tenant.strategy,
            s3_bucket=tenant.s3_bucket,
            s3_endpoint=tenant.s3_endpoint,
            s3_region=tenant.s3_region,
            s3_access_key_id=tenant.s3_access_key_id,
            s3_prefix=tenant.s3_prefix,
            s3_ca_bundle=_certificates(tenant.s3_ca_bundle),
            previous_hmac_key_expires_at=previous if tenant.hmac_key_previous_enc else None,
            s3_secret_access_key=MASK if tenant.s3_secret_enc else None,
            created_at=tenant.created_at,
            paused_at=tenant.paused_at,
            paused_reason=tenant.paused_reason,
            capture_outgoing=tenant.capture_outgoing,
            capture_status=tenant.capture_status,
            capture_groups=tenant.capture_groups,
            capture_types=tenant.capture_types.split(",") if tenant.capture_types else None,
            capture_max_bytes=tenant.capture_max_bytes,
            delete_revoked=tenant.delete_revoked,
            renditions=tenant.renditions,
            retention_days=tenant.retention_days,
            object_lock=cast(Literal["governance", "compliance"] | None, tenant.object_lock_mode),
            lock_days=tenant.object_lock_days,
            notify_url=tenant.notify_url,
            notify_secret=MASK if tenant.notify_secret_enc else None,
        )


class Erasure(Shape):
    """What an erasure removed (rows, object versions, bytes, the media ids) and kept: rows
    under legal hold, rows being transferred right now (erase again), objects the bucket
    refused to delete (their rows kept)."""

    tenant: str
    rows: int
    objects: int
    size: int = Field(alias="bytes")
    held: int
    in_flight: int = Field(alias="inFlight")
    errors: list[str]
    locked: list[str] = Field(
        default_factory=list,
        description="Rows whose objects S3 Object Lock retains or holds (kept whole): "
        "'<media id>: locked until <date> (<mode>)' or '<media id>: under legal hold'",
    )
    media_ids: list[str] = Field(alias="mediaIds")

    @classmethod
    def of(cls, tenant: str, done: dict[str, Any]) -> Erasure:
        """From an erasure's report (archiver.governance.erasure.Erased.doc())."""
        return cls.model_validate({"tenant": tenant, **done})


class ErasureAnswer(Shape):
    """``POST /api/admin/erase``."""

    data: Erasure


class AuditRecord(Shape):
    """One administrative action: who (``admin``, ``key:<id>``, ``cli:<os user>``,
    ``retention``), what, when, on which tenant."""

    id: int
    at: datetime
    actor: str
    action: str
    tenant: str | None
    detail: dict[str, Any] | None


class AuditPage(Shape):
    """``GET /api/admin/audit``: newest first."""

    data: list[AuditRecord]


def _certificates(pem: str | None) -> int | None:
    return None if not pem else pem.count("-----BEGIN CERTIFICATE-----")


# Every shape the HTTP API answers with, for the OpenAPI document's components.
class ExportJobInfo(Shape):
    """An eDiscovery export the admin API asked for, and how it went."""

    id: int
    tenant: str
    status: Literal["queued", "running", "done", "failed"]
    path: str = Field(description="Where the bag is written, on the workers' file system")
    query: dict[str, str]
    result: dict[str, Any] | None = Field(
        description="When done: {bag, files, bytes, thumbnails, skipped}"
    )
    error: str | None
    created_at: datetime = Field(alias="createdAt")
    finished_at: datetime | None = Field(alias="finishedAt")

    @classmethod
    def of(cls, job: ExportJob) -> ExportJobInfo:
        assert job.id is not None and job.created_at is not None
        return cls(
            id=job.id,
            tenant=job.tenant,
            status=cast(Literal["queued", "running", "done", "failed"], job.status),
            path=job.path,
            query=json.loads(job.query),
            result=json.loads(job.result) if job.result else None,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
        )


class ExportJobAnswer(Shape):
    """``POST /api/admin/export-bundle`` (202) and ``GET /api/admin/export-bundle/{id}``."""

    data: ExportJobInfo


API_SHAPES: tuple[type[Shape], ...] = (
    MediaInfo,
    MediaPage,
    OneMedia,
    StatsAnswer,
    Error,
    WebhookAnswer,
    Ignored,
    NotCaptured,
    Revoked,
    SessionState,
    ErasureAnswer,
    AuditPage,
    ExportJobAnswer,
    Readiness,
    Health,
)
