"""The tamper-evident record: per tenant, an append-only chain of what was archived, what
administrators did (the audit trail) and what was erased.

Each entry holds the canonical JSON of what it records and ``hash = SHA-256(previous hash,
"\\n", body)``, so changing, removing or reordering any entry breaks every link after it.
The beat seals newly archived media and new audit events every
``ARCHIVER_SEAL_INTERVAL_SECONDS``; an erasure seals its deletions in the transaction that
deletes the rows, so a row that disappears without one is found. ``titan-archiver audit
verify`` recomputes the chains and compares each sealed record with its row, and names the
first broken link. Entries are never updated or deleted by the archiver.

Chain 0 is the deployment's own (audit events that name no tenant).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from archiver.infra.db import session_scope, transactional
from archiver.tables import AuditEvent, LedgerEntry, LedgerHead, Media, Tenant

GENESIS = "0" * 64
SEAL_BATCH = 2000


def canonical(body: dict[str, Any]) -> str:
    """The one text a body is hashed as: sorted keys, no spaces, ASCII."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def link(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def archived_body(row: Media) -> dict[str, Any]:
    """What the archive record of a media says: which file, its bytes, where it went."""
    return {
        "kind": "archived",
        "mediaId": row.media_id,
        "messageId": row.message_id,
        "session": row.session,
        "sha256": row.sha256,
        "size": row.size,
        "bucket": row.bucket,
        "key": row.object_key,
        "s3Url": row.s3_url,
        "receivedAt": _when(row.received_at),
        "archivedAt": _when(row.archived_at),
    }


def audit_body(event: AuditEvent) -> dict[str, Any]:
    return {
        "kind": "audit",
        "id": event.id,
        "at": _when(event.at),
        "actor": event.actor,
        "action": event.action,
        "tenant": event.tenant,
        "detail": event.detail,
    }


def erased_body(row: Media, *, at: datetime) -> dict[str, Any]:
    return {
        "kind": "erased",
        "mediaId": row.media_id,
        "archivedRecord": row.sealed_seq,
        "at": _when(at),
    }


def append(
    session: Session, tenant_id: int, entries: Iterable[tuple[str, int | None, dict[str, Any]]]
) -> list[int]:
    """Append ``(kind, ref, body)`` entries to the tenant's chain, in order; their seqs.
    The chain's head row is locked first (on PostgreSQL; SQLite writes one at a time), so
    two writers never fork a chain."""
    head = session.exec(
        select(LedgerHead).where(col(LedgerHead.tenant_id) == tenant_id).with_for_update()
    ).first()
    if head is None:
        head = LedgerHead(tenant_id=tenant_id, seq=0, hash=GENESIS)
        session.add(head)
    seqs: list[int] = []
    for kind, ref, body in entries:
        text = canonical(body)
        digest = link(head.hash, text)
        seq = head.seq + 1
        session.add(
            LedgerEntry(
                tenant_id=tenant_id,
                seq=seq,
                kind=kind,
                ref=ref,
                body=text,
                prev_hash=head.hash,
                hash=digest,
            )
        )
        head.seq, head.hash = seq, digest
        seqs.append(seq)
    session.add(head)
    session.flush()
    return seqs


def seal(engine: Engine) -> dict[int, tuple[int, str]]:
    """Seal what is not sealed yet: archived media (in the order they were archived) and
    audit events (in the order they were recorded), per tenant; the new head (seq, hash)
    of each chain that grew."""
    grown: dict[int, tuple[int, str]] = {}
    with session_scope(engine) as session:
        tenants = {t.saved_id for t in session.exec(select(Tenant))}
        # A removed tenant's last events (its removal) are sealed into its chain too.
        tenants |= {
            tenant_id
            for tenant_id in session.exec(
                select(AuditEvent.tenant_id).where(col(AuditEvent.sealed_seq).is_(None)).distinct()
            )
            if tenant_id is not None
        }
    # One transaction per chain: its head locked, its entries and the rows' marks together
    # (the worker's engine commits each statement alone otherwise).
    chained = transactional(engine)
    for tenant_id in [0, *sorted(tenants)]:
        with session_scope(chained) as session:
            if _seal_tenant(session, tenant_id):
                head = session.get(LedgerHead, tenant_id)
                if head is not None:
                    grown[tenant_id] = (head.seq, head.hash)
    return grown


def _seal_tenant(session: Session, tenant_id: int) -> int:
    events = list(
        session.exec(
            select(AuditEvent)
            .where(
                col(AuditEvent.sealed_seq).is_(None),
                col(AuditEvent.tenant_id).is_(None)
                if tenant_id == 0
                else col(AuditEvent.tenant_id) == tenant_id,
            )
            .order_by(col(AuditEvent.id))
            .limit(SEAL_BATCH)
        )
    )
    rows: list[Media] = []
    if tenant_id:
        rows = list(
            session.exec(
                select(Media)
                .where(
                    col(Media.tenant_id) == tenant_id,
                    col(Media.sealed_seq).is_(None),
                    col(Media.archived_at).is_not(None),
                )
                .order_by(col(Media.archived_at), col(Media.pk))
                .limit(SEAL_BATCH)
            )
        )
    if not events and not rows:
        return 0
    entries: list[tuple[str, int | None, dict[str, Any], Any]] = [
        ("archived", row.pk, archived_body(row), row) for row in rows
    ] + [("audit", event.id, audit_body(event), event) for event in events]
    seqs = append(session, tenant_id, [(kind, ref, body) for kind, ref, body, _ in entries])
    for (kind, ref, _, _), seq in zip(entries, seqs, strict=True):
        table = Media if kind == "archived" else AuditEvent
        key = Media.pk if kind == "archived" else AuditEvent.id
        session.execute(update(table).where(col(key) == ref).values(sealed_seq=seq))
    return len(seqs)


def record_erasures(session: Session, tenant_id: int, rows: list[Media], *, at: datetime) -> None:
    """Seal the erasure of archived ``rows`` in the transaction that deletes them."""
    gone = [row for row in rows if row.archived_at is not None]
    if gone:
        append(session, tenant_id, [("erased", row.pk, erased_body(row, at=at)) for row in gone])


# -- verifying ------------------------------------------------------------------------------

CHUNK = 1000


@dataclass
class Verification:
    """What ``verify`` found for one chain: the first broken link (None: intact)."""

    tenant_id: int
    tenant: str
    entries: int = 0
    unsealed: int = 0  # records not sealed yet (the next sealing pass takes them)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what)

    @property
    def broken(self) -> str | None:
        return min(self.problems)[1] if self.problems else None

    def doc(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "entries": self.entries,
            "intact": not self.problems,
            "firstBroken": self.broken,
            "problems": [what for _, what in sorted(self.problems)[:100]],
            "unsealed": self.unsealed,
        }


def verify(session: Session, *, tenant_id: int, tenant: str) -> Verification:
    """Recompute the tenant's chain link by link, then compare each sealed record with its
    row: an entry edited, removed or reordered, a sealed row edited, or a sealed row deleted
    without an erasure entry is named; ``broken`` is the first. Streams the chain (flat
    memory but for the set of erased row ids)."""
    found = Verification(tenant_id, tenant)
    erased, purged_at = _check_links(session, found)
    _check_records(session, found, "archived", erased, purged_at)
    _check_records(session, found, "audit", erased, purged_at)
    media_unsealed = (
        select(func.count())
        .select_from(Media)
        .where(
            col(Media.tenant_id) == tenant_id,
            col(Media.archived_at).is_not(None),
            col(Media.sealed_seq).is_(None),
        )
    )
    found.unsealed = int(session.exec(media_unsealed).one()) + int(
        session.exec(
            select(func.count())
            .select_from(AuditEvent)
            .where(_events_of(tenant_id), col(AuditEvent.sealed_seq).is_(None))
        ).one()
    )
    return found


def _events_of(tenant_id: int) -> Any:
    if tenant_id == 0:
        return col(AuditEvent.tenant_id).is_(None)
    return col(AuditEvent.tenant_id) == tenant_id


def _entries(session: Session, tenant_id: int, kind: str | None = None) -> Iterable[LedgerEntry]:
    """The chain's entries in order, read a chunk at a time."""
    after = 0
    while True:
        query = select(LedgerEntry).where(
            col(LedgerEntry.tenant_id) == tenant_id, col(LedgerEntry.seq) > after
        )
        if kind is not None:
            query = query.where(col(LedgerEntry.kind) == kind)
        chunk = list(session.exec(query.order_by(col(LedgerEntry.seq)).limit(CHUNK)))
        yield from chunk
        if len(chunk) < CHUNK:
            return
        after = chunk[-1].seq


def _check_links(session: Session, found: Verification) -> tuple[set[int], int | None]:
    """Every link: numbered without a gap, following its predecessor, its hash its own.
    (The row ids erasures recorded, the seq of a purging tenant removal.)"""
    prev, expected = GENESIS, 1
    erased: set[int] = set()
    purged_at: int | None = None
    for entry in _entries(session, found.tenant_id):
        found.entries += 1
        if entry.seq != expected:
            found.problems.append(
                (expected, f"record #{expected}: missing (the chain jumps to #{entry.seq})")
            )
        elif entry.prev_hash != prev:
            found.problems.append(
                (entry.seq, f"record #{entry.seq}: does not follow record #{entry.seq - 1}")
            )
        elif link(entry.prev_hash, entry.body) != entry.hash:
            found.problems.append((entry.seq, f"record #{entry.seq}: its content was changed"))
        prev, expected = entry.hash, entry.seq + 1
        if entry.kind == "erased" and entry.ref is not None:
            erased.add(entry.ref)
        elif entry.kind == "audit" and _purges(entry.body):
            purged_at = entry.seq
    head = session.get(LedgerHead, found.tenant_id)
    if head is not None and (head.seq, head.hash) != (expected - 1, prev):
        found.problems.append(
            (
                head.seq,
                f"record #{head.seq}: the chain ends at #{expected - 1}, its head at #{head.seq}",
            )
        )
    return erased, purged_at


def _purges(body: str) -> bool:
    """An audit record of a tenant removed with its media rows (--purge)."""
    doc = json.loads(body)
    if doc.get("action") != "tenant.remove" or not doc.get("detail"):
        return False
    return bool(json.loads(doc["detail"]).get("purge"))


def _check_records(
    session: Session, found: Verification, kind: str, erased: set[int], purged_at: int | None
) -> None:
    """Each sealed record against its row, a chunk of rows at a time."""
    batch: list[LedgerEntry] = []

    def compare() -> None:
        refs = [entry.ref for entry in batch if entry.ref is not None]
        rows: dict[int | None, Any]
        if kind == "archived":
            found_rows = session.exec(select(Media).where(col(Media.pk).in_(refs)))
            rows = {row.pk: canonical(archived_body(row)) for row in found_rows}
        else:
            events = session.exec(select(AuditEvent).where(col(AuditEvent.id).in_(refs)))
            rows = {event.id: canonical(audit_body(event)) for event in events}
        for entry in batch:
            row = rows.get(entry.ref)
            what = json.loads(entry.body)
            name = (
                f"media {what.get('mediaId')}" if kind == "archived" else f"audit event {entry.ref}"
            )
            if row is None:
                if kind == "archived" and (
                    entry.ref in erased or (purged_at is not None and purged_at > entry.seq)
                ):
                    continue
                found.problems.append(
                    (entry.seq, f"record #{entry.seq}: {name} was deleted with no erasure recorded")
                )
            elif row != entry.body:
                found.problems.append((entry.seq, f"record #{entry.seq}: {name} was changed"))
        batch.clear()

    for entry in _entries(session, found.tenant_id, kind):
        batch.append(entry)
        if len(batch) >= CHUNK:
            compare()
    if batch:
        compare()
