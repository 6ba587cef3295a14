"""The media row's state machine: claim under a lease, renew, finish, and re-open.

queued ──claim──> archiving ──> archived
   ^                 │    └───> failed   (permanent error; past the retry horizon; or its
   │                 │                    workers kept dying: ``crashes`` reached the cap)
   └── retrying <────┘ (transient error: waits until ``retry_at``, then the dispatcher in
                        archiver/sweep.py publishes it and a later attempt claims it)

failed ──retry (operator)──> queued        archived ──reopen (reconcile)──> queued

Every transition is a conditional UPDATE that proceeds only if exactly one row changed,
so two workers can never both own a row, and a worker whose lease was taken over
cannot overwrite the newer owner's outcome (``attempts`` is the fencing token).
``queued_at`` records the last publish, marked before it and taken back if it failed
(``mark_unqueued``); NULL means the row is pending and not in the broker. A new row is
recorded marked (``queued_at`` = ``received_at``), so a successful publish costs no second
write; a receiver killed between its commit and its publish leaves a row that Titan's
redelivery publishes (``take_again``), or, failing that, the sweeper once it finds no
message for it. A retrying row is published by the dispatcher once its ``retry_at`` has
come. A claim that takes over an expired lease counts a crash.
Rows are created by the receiver (archiver/recording.py); reads live in archiver/query.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, update
from sqlmodel import Session, SQLModel, col, select

from archiver.tables import Media, Status

MAX_ERROR_LEN = 1000


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a row: the row, or why not (and until when)."""

    row: Media | None
    busy_until: datetime | None = None  # another worker holds the lease until then


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        col(Media.status) == Status.QUEUED.value,
        # A retrying row waits for its time (a Retry-After is honoured even against an
        # early message for it).
        and_(
            col(Media.status) == Status.RETRYING.value,
            or_(col(Media.retry_at).is_(None), col(Media.retry_at) <= now),
        ),
        and_(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now),
    )


def claim(session: Session, *, pk: int, now: datetime, lease_seconds: int) -> Claim:
    """Take ownership of a row for one attempt, or say why it is not ours to work on now."""
    return claim_many(session, pks=[pk], now=now, lease_seconds=lease_seconds)[pk]


def claim_many(
    session: Session, *, pks: list[int], now: datetime, lease_seconds: int
) -> dict[int, Claim]:
    """``claim`` for several rows in one statement (a batch of small transfers)."""
    # One round-trip: the UPDATE hands back the claimed rows (no SELECT after it).
    claimed = (
        session.execute(
            update(Media)
            .where(col(Media.pk).in_(pks), _claimable(now))
            .values(
                status=Status.ARCHIVING.value,
                attempts=col(Media.attempts) + 1,
                # Taking over an expired lease: the worker that held it died (or hung).
                crashes=col(Media.crashes)
                + case((col(Media.status) == Status.ARCHIVING.value, 1), else_=0),
                lease_until=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(Media)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    claims = {row.saved_pk: Claim(row=row) for row in claimed}
    others = [pk for pk in pks if pk not in claims]
    if others:
        query = select(Media.pk, Media.status, Media.lease_until).where(col(Media.pk).in_(others))
        held = {pk: until for pk, status, until in session.exec(query) if status == "archiving"}
        for pk in others:
            claims[pk] = Claim(row=None, busy_until=held.get(pk))
    return claims


def set_upload_id(session: Session, *, pk: int, attempt: int, upload_id: str | None) -> bool:
    """Remember the multipart upload this attempt opened, so a successor can abort it."""
    return _finish(session, pk=pk, attempt=attempt, values={"upload_id": upload_id})


_TABLE = SQLModel.metadata.tables[Media.__tablename__]


def _finish(session: Session, *, pk: int, attempt: int, values: dict[str, Any]) -> bool:
    # A Core UPDATE on the table: no ORM bulk-update bookkeeping on the worker's hot path.
    result = session.connection().execute(
        _TABLE.update()
        .where(
            _TABLE.c.pk == pk,
            _TABLE.c.status == Status.ARCHIVING.value,
            _TABLE.c.attempts == attempt,
        )
        .values(**values)
    )
    return result.rowcount == 1


def renew_lease(
    session: Session, *, pk: int, attempt: int, now: datetime, lease_seconds: int
) -> bool:
    """Extend the lease of a long transfer; False if the row is no longer ours."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={"lease_until": now + timedelta(seconds=lease_seconds), "updated_at": now},
    )


@dataclass(frozen=True)
class Transferred:
    """Where a finished transfer left the file, as the row records it: our own object
    (``object_key`` with its bucket, SHA-256 and ETag) or one Titan persisted (its URL)."""

    s3_url: str | None = None
    size: int | None = None
    bucket: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    etag: str | None = None
    render_state: str | None = None  # "pending" when renditions are asked for with it
    verified_at: datetime | None = None  # when its bytes were shown to be the archived ones

    def values(self) -> dict[str, Any]:
        found: dict[str, Any] = {"persisted": True, "s3_url": self.s3_url, "size": self.size}
        if self.verified_at is not None:
            found["verified_at"] = self.verified_at
            if self.object_key is None and self.sha256 is not None:  # read back after Titan
                found["sha256"] = self.sha256
        if self.object_key is not None:  # ours: every field of the object, None included
            found |= {
                "bucket": self.bucket,
                "object_key": self.object_key,
                "sha256": self.sha256,
                "etag": self.etag,
            }
        if self.render_state is not None:
            found["render_state"] = self.render_state
        return found


def mark_archived(
    session: Session, *, pk: int, attempt: int, now: datetime, outcome: Transferred
) -> bool:
    """Record a finished transfer."""
    values = {
        **outcome.values(),
        "status": Status.ARCHIVED.value,
        "archived_at": now,
        "updated_at": now,
        "lease_until": None,
        "last_error": None,
        "upload_id": None,
        "queued_at": None,
        "retry_at": None,
    }
    return _finish(session, pk=pk, attempt=attempt, values=values)


def mark_retrying(
    session: Session, *, pk: int, attempt: int, now: datetime, error: str, due: datetime
) -> bool:
    """A transient failure: the row waits until ``due``; the dispatcher publishes it then."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.RETRYING.value,
            "last_error": error[:MAX_ERROR_LEN],
            "lease_until": None,
            "updated_at": now,
            "queued_at": None,
            "retry_at": due,
        },
    )


def mark_failed(session: Session, *, pk: int, attempt: int, now: datetime, error: str) -> bool:
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.FAILED.value,
            "last_error": error[:MAX_ERROR_LEN],
            "lease_until": None,
            "updated_at": now,
            "queued_at": None,
        },
    )


def release(session: Session, *, pk: int, attempt: int, now: datetime) -> bool:
    """Hand a claimed row back untouched: its tenant is paused. The attempt is given back
    (it never reached Titan or the bucket with settings that work) and the row is out of
    the broker until the tenant resumes and the dispatcher publishes it (due at once: not
    after the grace a freshly received row gets for its own publish)."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.QUEUED.value,
            "attempts": attempt - 1,
            "lease_until": None,
            "updated_at": now,
            "queued_at": None,
            "upload_id": None,
            "retry_at": now,
        },
    )


def defer(session: Session, *, pk: int, attempt: int, now: datetime, until: datetime) -> bool:
    """Hand a claimed row back before any transfer: its tenant is over its concurrency cap
    or held by Titan's rate limit (archiver/fairness.py). No attempt spent; the dispatcher
    publishes it again from ``until`` on, as the tenant's slots allow."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.QUEUED.value,
            "attempts": attempt - 1,
            "lease_until": None,
            "updated_at": now,
            "queued_at": None,
            "retry_at": until,
        },
    )


# -- publish bookkeeping: is the row known to be in the broker? ---------------------------


def take_again(session: Session, *, pks: list[int], at: datetime) -> list[int]:
    """Mark for a publish again, before it, those of ``pks`` (rows a redelivery found) whose
    redelivery must publish them; return them. A row is taken while it is ``queued`` and
    either not known to be in the broker (its publish failed; a worker handed it back) or
    known only through its first receiver's mark, untouched since: that receiver may have
    died between its commit and its publish, and Titan redelivers exactly what was never
    answered 2xx. A row someone published since (the dispatcher, the sweeper, an earlier
    redelivery) is left alone. (``recording.PG_EXISTING`` is this test on the receiver's
    connections.)"""
    if not pks:
        return []
    taken = session.execute(
        update(Media)
        .where(
            col(Media.pk).in_(pks),
            col(Media.status) == Status.QUEUED.value,
            or_(
                col(Media.queued_at).is_(None),
                and_(
                    col(Media.queued_at) == col(Media.received_at),
                    col(Media.updated_at) == col(Media.received_at),
                ),
            ),
        )
        .values(queued_at=at)
        .returning(col(Media.pk))
    )
    return sorted(pk for (pk,) in taken)


def take_for_publish(session: Session, *, pks: list[int], at: datetime) -> list[int]:
    """Mark as published, before publishing, those of ``pks`` nobody marked meanwhile; return
    them. Marking first means a worker that hands a row back (queued_at NULL) after the
    publish is never overwritten, and two dispatchers never both publish a row."""
    if not pks:
        return []
    taken = session.execute(
        update(Media)
        .where(col(Media.pk).in_(pks), col(Media.queued_at).is_(None))
        .values(queued_at=at)
        .returning(col(Media.pk))
    )
    return sorted(pk for (pk,) in taken)


def mark_unqueued(session: Session, *, pks: list[int], at: datetime) -> None:
    """The publish of ``pks``, marked ``at``, failed: take the mark back so the next delivery
    or the dispatcher queues them; a row marked again since keeps its newer mark.
    (``recording.PG_UNMARK`` on the receiver's connections.)"""
    if pks:
        session.execute(
            update(Media)
            .where(col(Media.pk).in_(pks), col(Media.queued_at) == at)
            .values(queued_at=None)
        )


# -- back to the queue: operator retries and reconcile ----------------------------------


def requeue_failed(
    session: Session, *, tenant_id: int | None, media_ids: list[str] | None, now: datetime
) -> list[int]:
    """Turn failed rows back into fresh queued rows (attempts reset); return their pks."""
    query = select(Media.pk).where(Media.status == Status.FAILED.value)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    if media_ids is not None:
        query = query.where(col(Media.media_id).in_(media_ids))
    pks = [pk for pk in session.exec(query.order_by(col(Media.pk))) if pk is not None]
    for start in range(0, len(pks), 500):
        session.execute(
            update(Media)
            .where(
                col(Media.pk).in_(pks[start : start + 500]),
                col(Media.status) == Status.FAILED.value,
            )
            .values(status=Status.QUEUED.value, attempts=0, queued_at=now, updated_at=now)
        )
    return pks


def reopen(session: Session, *, pk: int, reason: str, now: datetime) -> bool:
    """Send an archived row back to the queue (its object went missing or differs)."""
    result = session.connection().execute(
        update(Media)
        .where(col(Media.pk) == pk, col(Media.status) == Status.ARCHIVED.value)
        .values(
            status=Status.QUEUED.value,
            attempts=0,
            last_error=reason[:MAX_ERROR_LEN],
            queued_at=now,
            updated_at=now,
        )
    )
    return result.rowcount == 1
