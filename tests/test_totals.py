"""The maintained totals and conversation summaries (archiver/reporting/totals.py,
migrations 0016 and 0019) stay exact: after concurrent group-commit inserts (duplicates
among them), claims,
archives with sizes, retries, failures, retention-style deletions, the erasure of
conversations' newest rows and a tenant removed, while folds run alongside, they equal a
GROUP BY over the media table, on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import Engine, delete, func
from sqlalchemy import select as core_select
from sqlmodel import col, select

from archiver.infra.db import session_scope
from archiver.media import lifecycle
from archiver.media.recording import Arrival, MediaItem
from archiver.reporting import figures, totals
from archiver.tables import Media, MediaChatDelta, MediaTotalDelta, Tenant, utcnow
from archiver.tenants.tenants import remove_tenant
from devstack import fixtures
from tests.test_media_rows import make_tenant

TYPES = ("image", "video", "audio", "document")


def _item(n: int) -> MediaItem:
    return MediaItem(
        media_id=f"m{n}",
        session="s",
        message_id=f"msg{n}",
        message_type=TYPES[n % len(TYPES)],
        mime_type="application/octet-stream",
        file_length=None if n % 7 == 0 else 1000 + n,
        sender="+1",
        caption=None,
        filename=None,
        media_url=None,
        message_at=None,
        event_id=f"e{n}",
        # 40 conversations: every fifth a group; one-to-one chats carry the contact's name
        # (two spellings, so the summary must keep the greatest), or our own outgoing media.
        chat=f"chat{n % 40}",
        is_group=n % 40 % 5 == 0,
        from_me=n % 11 == 0,
        sender_name=None if n % 40 % 5 == 0 else f"Contact {n % 40}{'' if n % 2 else ' B'}",
    )


Chats = dict[tuple[int, str], tuple[int, int, str, str | None, bool]]


def _chats_truth(engine: Engine) -> Chats:
    """Each conversation worked out from its rows: count, bytes, newest row, the name on the
    contact's newest own message (ties: the greatest name), group or not."""
    with session_scope(engine) as session:
        rows = session.exec(select(Media).where(col(Media.chat).is_not(None))).all()
    by_chat: dict[tuple[int, str], list[Media]] = {}
    for row in rows:
        by_chat.setdefault((row.tenant_id, row.chat or ""), []).append(row)
    found: Chats = {}
    for key, members in by_chat.items():
        named = [
            (m.received_at, m.sender_name)
            for m in members
            if not m.is_group and not m.from_me and m.sender_name is not None
        ]
        newest = max(m.received_at for m in members if m.received_at is not None)
        found[key] = (
            len(members),
            sum(m.size if m.size is not None else m.file_length or 0 for m in members),
            str(newest.replace(tzinfo=None))[:26],
            max(named, key=lambda n: (n[0], n[1]))[1] if named else None,
            any(m.is_group for m in members),
        )
    return found


def _chats_agree(engine: Engine, *, pending_deletions: bool) -> None:
    """Counts and bytes are exact at once; after deletions on PostgreSQL, the last activity
    and the name are looked up again when the deltas are folded."""
    maintained, truth = _chats_maintained(engine), _chats_truth(engine)
    if pending_deletions:
        maintained = {k: (*v[:2], "", None, v[4]) for k, v in maintained.items()}
        truth = {k: (*v[:2], "", None, v[4]) for k, v in truth.items()}
    assert maintained == truth


def _chats_maintained(engine: Engine) -> Chats:
    with session_scope(engine) as session:
        found = totals.chats(session, tenant_id=None, limit=1000)
        one = totals.chats(session, tenant_id=found[0].tenant_id, limit=3) if found else []
    # Newest first, and one tenant's page is that tenant's part of the admin's.
    order = [(c.last_at, c.chat, c.tenant_id) for c in found]
    assert order == sorted(order, reverse=True)
    assert one == [c for c in found if c.tenant_id == found[0].tenant_id][:3]
    return {
        (c.tenant_id, c.chat): (
            c.rows,
            c.bytes,
            str(c.last_at.replace(tzinfo=None) if c.last_at else None)[:26],
            c.name,
            c.is_group,
        )
        for c in found
    }


def _truth(engine: Engine) -> Counter[tuple[int, str, str, str]]:
    """Rows and bytes per (tenant, status, type), counted the slow way."""
    size = func.coalesce(Media.size, Media.file_length, 0)
    found: Counter[tuple[int, str, str, str]] = Counter()
    with session_scope(engine) as session:
        query = core_select(
            col(Media.tenant_id),
            col(Media.status),
            col(Media.message_type),
            func.count(),
            func.sum(size),
        ).group_by(col(Media.tenant_id), col(Media.status), col(Media.message_type))
        for tenant, status, kind, n, b in session.execute(query):
            found[(tenant, status, kind, "rows")] = int(n)
            found[(tenant, status, kind, "bytes")] = int(b or 0)
    return found


def _maintained(engine: Engine) -> Counter[tuple[int, str, str, str]]:
    found: Counter[tuple[int, str, str, str]] = Counter()
    with session_scope(engine) as session:
        for t in totals.read(session):
            found[(t.tenant_id, t.status, t.message_type, "rows")] = t.rows
            if t.bytes:
                found[(t.tenant_id, t.status, t.message_type, "bytes")] = t.bytes
    return found


def _without_zeros(
    counts: Counter[tuple[int, str, str, str]],
) -> dict[tuple[int, str, str, str], int]:
    return {k: v for k, v in counts.items() if v}


def test_totals_stay_exact_under_concurrent_writes_and_folds(engine: Engine) -> None:
    tenants = [make_tenant(engine, name) for name in ("acme", "globex", "initech")]
    assert _maintained(engine) == Counter()
    rng = random.Random(7)
    pg = engine.dialect.name == "postgresql"

    def ingest(_: int) -> None:
        for _batch in range(6):
            arrivals = []
            for _ in range(25):
                n = rng.randrange(1500)  # overlapping ids: duplicates within and across batches
                tenant = tenants[n % len(tenants)]
                arrivals.append(
                    Arrival(tenant_id=tenant.id or 0, strategy="download", item=_item(n))
                )
            fixtures.record(engine, arrivals)

    stop = threading.Event()

    def folding() -> None:
        # Small folds, again and again: many interleavings with the writers (on SQLite a
        # fold has nothing to do; the pause keeps this loop from starving the writers).
        while not stop.wait(0.002):
            totals.fold(engine, limit=7)

    folder = threading.Thread(target=folding)
    folder.start()
    try:
        with ThreadPoolExecutor(4 if pg else 1) as pool:
            list(pool.map(ingest, range(4)))
        assert _without_zeros(_maintained(engine)) == _without_zeros(_truth(engine))
        assert _chats_maintained(engine) == _chats_truth(engine)

        with session_scope(engine) as session:
            pks = list(session.exec(select(Media.pk).order_by(col(Media.pk))))

        def transitions(share: list[int]) -> None:
            for pk in share:
                now = utcnow()
                with session_scope(engine) as session:
                    claim = lifecycle.claim(session, pk=pk, now=now, lease_seconds=60)
                if claim.row is None:
                    continue
                attempt = claim.row.attempts
                with session_scope(engine) as session:
                    if pk % 3 == 0:
                        lifecycle.mark_archived(
                            session,
                            pk=pk,
                            attempt=attempt,
                            now=now,
                            outcome=lifecycle.Transferred(size=pk * 10),
                        )
                    elif pk % 3 == 1:
                        lifecycle.mark_retrying(
                            session, pk=pk, attempt=attempt, now=now, error="x", due=now
                        )
                    else:
                        lifecycle.mark_failed(session, pk=pk, attempt=attempt, now=now, error="x")

        shares = [pks[i::4] for i in range(4)]
        with ThreadPoolExecutor(4 if pg else 1) as pool:
            list(pool.map(transitions, shares))
        with session_scope(engine) as session:  # retention: the oldest archived rows go
            session.execute(
                delete(Media).where(
                    col(Media.status) == "archived", col(Media.pk) < pks[len(pks) // 2]
                )
            )
        with session_scope(engine) as session:  # erasure: some conversations' newest rows
            newest = session.exec(
                select(Media.chat, func.max(Media.received_at))
                .where(Media.tenant_id == tenants[0].id)
                .group_by(Media.chat)
            ).all()
            for chat, last in newest[:10]:
                session.execute(
                    delete(Media).where(
                        col(Media.tenant_id) == tenants[0].id,
                        col(Media.chat) == chat,
                        col(Media.received_at) == last,
                    )
                )
        _chats_agree(engine, pending_deletions=pg)
        with session_scope(engine) as session:
            remove_tenant(session, name="initech", purge=True)
    finally:
        stop.set()
        folder.join()
    truth = _without_zeros(_truth(engine))
    assert {k[0] for k in truth} == {tenants[0].id, tenants[1].id}
    assert _without_zeros(_maintained(engine)) == truth
    chats_truth = _chats_truth(engine)
    assert {t for t, _ in chats_truth} == {tenants[0].id, tenants[1].id}
    _chats_agree(engine, pending_deletions=pg)
    totals.fold(engine)
    assert _without_zeros(_maintained(engine)) == truth
    assert _chats_maintained(engine) == chats_truth
    with session_scope(engine) as session:
        assert session.exec(select(func.count()).select_from(MediaTotalDelta)).one() == 0
        assert session.exec(select(func.count()).select_from(MediaChatDelta)).one() == 0
        # The figures read them: the stats and backlog agree with the table.
        stats = figures.stats(session, tenant_id=tenants[0].id)
        by_status = Counter(
            dict(
                session.exec(
                    select(Media.status, func.count())
                    .where(Media.tenant_id == tenants[0].id)
                    .group_by(Media.status)
                ).all()
            )
        )
        assert {s: n for s, (n, _) in stats.by_status.items()} == dict(by_status)
        backlog = figures.backlog(session)
        assert (
            sum(backlog.counts.values())
            == session.exec(select(func.count()).select_from(Media)).one()
        )
        oldest_failed = session.exec(
            select(func.min(Media.received_at)).where(Media.status == "failed")
        ).one()
        assert backlog.oldest_failed is not None and oldest_failed is not None
        assert abs(
            backlog.oldest_failed.replace(tzinfo=None) - oldest_failed.replace(tzinfo=None)
        ) < timedelta(seconds=1)
        assert session.get(Tenant, tenants[2].id) is None
