"""Accept one webhook delivery: verify, parse, record durably, queue; answer with a status."""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import Engine

from archiver import media
from archiver.db import session_scope
from archiver.envelope import SESSION_RE, media_item, parse_body
from archiver.errors import InvalidSignature, NotFound, PayloadError, Unavailable
from archiver.queue import publish_archive
from archiver.secrets_box import SecretBox
from archiver.signature import verify
from archiver.tables import utcnow
from archiver.tenants import get_tenant, secrets_of

log = logging.getLogger(__name__)

UNAUTHORIZED = {"error": "invalid signature"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = ""  # for metrics and logs: queued, duplicate, ignored, unauthorized, ...


class Intake:
    """The webhook path's logic; blocking I/O, so the endpoint runs it in a worker thread."""

    def __init__(self, *, engine: Engine, celery: Celery, box: SecretBox, retry_after: int) -> None:
        self._engine = engine
        self._celery = celery
        self._box = box
        self._retry_after = retry_after

    def accept(self, tenant_name: str, body: bytes, signature: str | None) -> Answer:
        try:
            return self._accept(tenant_name, body, signature)
        except InvalidSignature as exc:
            log.info("webhook refused for %r: %s", tenant_name[:64], exc)
            return Answer(401, UNAUTHORIZED, outcome="unauthorized")
        except PayloadError as exc:
            log.info("webhook for %r has a bad payload: %s", tenant_name, exc)
            return Answer(400, {"error": str(exc)}, outcome="bad_payload")
        except Unavailable as exc:
            log.warning("webhook for %r not accepted, %s", tenant_name, exc)
            return Answer(
                503,
                {"error": "temporarily unavailable, retry later"},
                {"Retry-After": str(self._retry_after)},
                outcome="unavailable",
            )

    def _accept(self, tenant_name: str, body: bytes, signature: str | None) -> Answer:
        # Unknown tenants get the same answer as bad signatures: existence is not disclosed.
        if not SESSION_RE.match(tenant_name):
            raise InvalidSignature("unknown tenant")
        with session_scope(self._engine) as session:
            try:
                tenant = get_tenant(session, name=tenant_name)
            except NotFound as exc:
                raise InvalidSignature("unknown tenant") from exc
            verify(body, signature, secrets_of(tenant, box=self._box).hmac_keys)
            envelope = parse_body(body)
            item = media_item(envelope)
            if item is None:
                log.debug("ignored %r event for %s", envelope.get("event"), tenant_name)
                return Answer(200, {"status": "ignored"}, outcome="ignored")
            recorded = media.record_item(session, tenant=tenant, item=item, now=utcnow())
        # Committed: the row is durable. Queue it; if the broker is down, flag the row as
        # not queued and answer 503: Titan's retry (or the sweeper) queues it again.
        if recorded.needs_publish:
            try:
                publish_archive(self._celery, pk=recorded.pk)
            except Unavailable:
                with suppress(Unavailable), session_scope(self._engine) as session:
                    media.mark_unqueued(session, pk=recorded.pk)
                raise
        outcome = "queued" if recorded.created else "duplicate"
        log.info("media %s of %s: %s", item.media_id, tenant_name, outcome)
        if recorded.created:
            return Answer(202, {"status": recorded.status, "id": item.media_id}, outcome=outcome)
        return Answer(200, {"status": "duplicate", "id": item.media_id}, outcome=outcome)
