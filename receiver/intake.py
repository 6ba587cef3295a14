"""Accept one webhook delivery: verify, parse, record durably, queue; answer with a status.

Runs on the event loop: HMAC and JSON parsing are microseconds for Titan's events, the
tenant comes from an in-process cache, and the durable write is shared with concurrent
requests through the group commit. Nothing is answered 2xx before its row is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from archiver.errors import ConfigError, InvalidSignature, PayloadError, Unavailable
from archiver.governance.revocations import record_revocation
from archiver.infra import logs, tracing
from archiver.infra.db import session_scope
from archiver.media.capture import not_captured
from archiver.media.recording import Arrival, MediaItem
from archiver.media.shapes import (
    Error,
    Ignored,
    NotCaptured,
    Revoked,
    SessionState,
    Shape,
    WebhookAnswer,
)
from archiver.names import SESSION_RE
from archiver.scheduling import pauses
from archiver.tables import Media, Status, Tenant, utcnow
from archiver.tenants import notify
from receiver.envelope import (
    Revocation,
    SessionChange,
    media_item,
    parse_body,
    revocation,
    session_change,
)
from receiver.group_commit import GroupCommit
from receiver.signature import verify
from receiver.tenant_cache import TenantCache

log = logging.getLogger(__name__)

UNAUTHORIZED = Error(error="invalid signature")
UNAVAILABLE = Error(error="temporarily unavailable, retry later")
IGNORED = Ignored(status="ignored")
NO_HEADERS: Mapping[str, str] = MappingProxyType({})  # an answer's headers when it has none
_PARSE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed in a thread, off the event loop


class Answer(NamedTuple):
    """What the intake answers (a named tuple: one per webhook, made in a third of a
    frozen dataclass's time)."""

    status: int
    body: Shape | bytes  # bytes: the JSON already written
    headers: Mapping[str, str] = NO_HEADERS
    outcome: str = ""  # for metrics and logs: queued, duplicate, ignored, unauthorized, ...
    not_captured: str | None = None  # why the tenant's capture policy left a media out
    tenant: str | None = None


class Intake:
    def __init__(
        self, *, tenants: TenantCache, commit: GroupCommit, retry_after: int, engine: Engine
    ) -> None:
        self._tenants = tenants
        self._commit = commit
        self._retry_after = retry_after
        self._engine = engine

    async def accept(self, tenant_name: str, body: bytes, signature: str | None) -> Answer:
        try:
            return await self._accept(tenant_name, body, signature)
        except InvalidSignature as exc:
            log.info(
                "webhook refused: %s",
                exc,
                extra={"tenant": _shown(tenant_name), "outcome": "unauthorized"},
            )
            return Answer(401, UNAUTHORIZED, outcome="unauthorized")
        except PayloadError as exc:
            log.info(
                "webhook has a bad payload: %s",
                exc,
                extra={"tenant": tenant_name, "outcome": "bad_payload"},
            )
            return Answer(400, Error(error=str(exc)), outcome="bad_payload")
        except (Unavailable, ConfigError) as exc:
            # ConfigError: this process cannot open the tenant's secrets (a master key missing
            # from ARCHIVER_SECRET_KEY / ARCHIVER_PREVIOUS_SECRET_KEYS). Titan retries; fix it.
            level = logging.ERROR if isinstance(exc, ConfigError) else logging.WARNING
            log.log(
                level,
                "webhook not accepted: %s",
                exc,
                extra={"tenant": tenant_name, "outcome": "unavailable"},
            )
            return Answer(
                503,
                UNAVAILABLE,
                {"Retry-After": str(self._retry_after)},
                outcome="unavailable",
            )

    async def _accept(self, tenant_name: str, body: bytes, signature: str | None) -> Answer:
        started = time.perf_counter()
        # Unknown tenants get the same answer as bad signatures: existence is not disclosed.
        if not SESSION_RE.match(tenant_name):
            raise InvalidSignature("unknown tenant")
        hit, tenant = self._tenants.cached(tenant_name)
        if not hit:
            tenant = await self._tenants.fetch(tenant_name)
        if tenant is None:
            raise InvalidSignature("unknown tenant")
        try:
            verify(body, signature, tenant.hmac_keys)
        except InvalidSignature:
            # A key rotated moments ago (`tenants connect`, `rotate-hmac-key`) is not in a
            # cached entry yet: Titan signs with it at once, so read the tenant again.
            if not hit or not self._tenants.may_reload(tenant_name):
                raise
            tenant = await self._tenants.fetch(tenant_name)
            if tenant is None:
                raise
            verify(body, signature, tenant.hmac_keys)
        if len(body) > _PARSE_INLINE_BYTES:
            item, envelope = await run_in_threadpool(_parse, body)
        else:
            item, envelope = _parse(body)
        if item is None:
            change = session_change(envelope)
            if change is not None:
                return await run_in_threadpool(
                    self._session_changed, tenant.id, tenant_name, change
                )
            revoked = revocation(envelope)
            if revoked is not None:
                return await run_in_threadpool(self._revoked, tenant.id, tenant_name, revoked)
            log.debug("ignored %r event for %s", envelope.get("event"), tenant_name)
            return Answer(200, IGNORED, outcome="ignored")
        reason = not_captured(tenant.capture, item)
        if reason is not None:
            log.info(
                "webhook ignored: not captured (%s)",
                reason,
                extra={
                    "tenant": tenant_name,
                    "session": item.session,
                    "mediaId": item.media_id,
                    "eventId": item.event_id,
                    "outcome": "ignored",
                },
            )
            return Answer(
                200,
                NotCaptured(status="ignored", reason=reason),
                outcome="ignored",
                not_captured=reason,
                tenant=tenant_name,
            )
        recorded = await self._commit.submit(
            Arrival(
                tenant_id=tenant.id,
                strategy=tenant.strategy,
                item=item,
                trace=tracing.current_traceparent(),
            )
        )
        if tenant.notify and recorded.status == Status.ARCHIVED:
            # Titan's auto-persist put it in the bucket already: its media.archived event is
            # in the outbox before the answer (a redelivery after a crash adds it then).
            await run_in_threadpool(self._notify_persisted, tenant.id, recorded.pk)
        outcome = "queued" if recorded.created else "duplicate"
        logs.event(
            log,
            logging.INFO,
            f"webhook {outcome}",
            {
                "tenant": tenant_name,
                "session": item.session,
                "mediaId": item.media_id,
                "eventId": item.event_id,
                "outcome": outcome,
                "durationMs": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        if recorded.created:
            # Created rows arrive queued, or archived when Titan already persisted the file.
            status: Literal["queued", "archived"] = (
                "archived" if recorded.status == Status.ARCHIVED else "queued"
            )
            return Answer(202, WebhookAnswer.json_of(status, item.media_id), outcome=outcome)
        return Answer(200, WebhookAnswer.json_of("duplicate", item.media_id), outcome=outcome)

    def _session_changed(self, tenant_id: int, tenant_name: str, change: SessionChange) -> Answer:
        """Hold or release a session's media (Titan reported it logged out, banned, or
        connected again); durable before the answer, like a media row."""
        with session_scope(self._engine) as session:
            if change.paused:
                changed = pauses.pause_session(
                    session,
                    tenant_id=tenant_id,
                    name=change.session,
                    reason=change.reason,
                    now=utcnow(),
                )
            else:
                changed = pauses.resume_session(session, tenant_id=tenant_id, name=change.session)
        state: Literal["paused", "resumed"] = "paused" if change.paused else "resumed"
        if changed:
            log.log(
                logging.WARNING if change.paused else logging.INFO,
                "session %s: %s; its media %s",
                state,
                change.reason,
                "waits until it is connected again" if change.paused else "is archived again",
                extra={"tenant": tenant_name, "session": change.session, "outcome": state},
            )
        return Answer(200, SessionState(status=state, session=change.session), outcome=state)

    def _notify_persisted(self, tenant_id: int, pk: int) -> None:
        with session_scope(self._engine) as session:
            owner = session.get(Tenant, tenant_id)
            row = session.get(Media, pk)
            if owner is None or row is None:
                return
            if notify.already(session, tenant_id=tenant_id, media_id=row.media_id):
                return
            notify.enqueue(session, tenant=owner, pk=pk, event=notify.ARCHIVED, now=utcnow())

    def _revoked(self, tenant_id: int, tenant_name: str, revoked: Revocation) -> Answer:
        """Record a revocation on the rows of the message it names (durable before the
        answer); a message we never archived is acknowledged and ignored."""
        with session_scope(self._engine) as session:
            count = record_revocation(
                session,
                tenant_id=tenant_id,
                session_name=revoked.session,
                message_id=revoked.message_id,
                event=revoked.event,
                now=utcnow(),
            )
        if not count:
            return Answer(200, IGNORED, outcome="ignored")
        log.info(
            "message %s: recorded on %d media",
            revoked.event.removeprefix("message."),
            count,
            extra={"tenant": tenant_name, "session": revoked.session, "outcome": "revoked"},
        )
        return Answer(
            200,
            Revoked(status="revoked", message_id=revoked.message_id, media=count),
            outcome="revoked",
        )


def _shown(tenant_name: str) -> str:
    """A tenant name as logged: as is when valid, else escaped (no forged log lines)."""
    return tenant_name if SESSION_RE.match(tenant_name) else ascii(tenant_name[:64])


def _parse(body: bytes) -> tuple[MediaItem | None, dict[str, Any]]:
    envelope = parse_body(body)
    return media_item(envelope), envelope
