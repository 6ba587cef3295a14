"""The media row state machine on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from archiver.errors import Unavailable
from archiver.infra.db import make_engine, session_scope
from archiver.media import lifecycle, recording
from archiver.media import query as queries
from archiver.media.query import MediaQuery
from archiver.media.recording import Arrival, MediaItem, Recorded
from archiver.reporting import figures
from archiver.scheduling import dispatch, sweep
from archiver.secrets_box import SecretBox
from archiver.tables import Status, Tenant, utcnow
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import fixtures
from receiver.publisher import Routed, Traces
from receiver.writers import writer_for
from tests.conftest import migrated_database

BOX = SecretBox("test-master-key-for-rows")


def make_tenant(engine: Engine, name: str = "acme") -> Tenant:
    with session_scope(engine) as session:
        tenant, _ = create_tenant(
            session,
            box=BOX,
            spec=TenantSpec(
                name=name,
                hmac_key="hmac-key-1",
                titan_url="http://titan",
                titan_api_key="k",
                strategy="download",
                s3_bucket="b",
            ),
        )
    return tenant


def item(media_id: str = "m1", media_url: str | None = None) -> MediaItem:
    return MediaItem(
        media_id=media_id,
        session="s",
        message_id="msg",
        message_type="image",
        mime_type="image/jpeg",
        file_length=10,
        sender="+1",
        caption=None,
        filename=None,
        media_url=media_url,
        message_at=None,
        event_id="evt",
    )


def record(engine: Engine, tenant: Tenant, it: MediaItem) -> Recorded:
    return fixtures.record_item(engine, tenant=tenant, item=it)


def test_second_delivery_of_the_same_media_is_a_duplicate(engine: Engine) -> None:
    tenant = make_tenant(engine)
    first, second = record(engine, tenant, item()), record(engine, tenant, item())
    assert first.created and not second.created and first.pk == second.pk


def test_same_media_id_in_two_tenants_is_two_rows(engine: Engine) -> None:
    a, b = make_tenant(engine, "a"), make_tenant(engine, "b")
    assert record(engine, a, item()).pk != record(engine, b, item()).pk


def test_auto_persisted_media_is_archived_on_arrival(engine: Engine) -> None:
    recorded = record(engine, make_tenant(engine), item(media_url="https://b.s3/x.jpg"))
    with session_scope(engine) as session:
        row = queries.get_row(session, pk=recorded.pk)
    assert row is not None and row.status == Status.ARCHIVED and row.persisted
    assert row.s3_url == "https://b.s3/x.jpg" and row.strategy == "auto"


def test_only_one_claim_wins(engine: Engine) -> None:
    pk = record(engine, make_tenant(engine), item()).pk
    now = utcnow()
    with session_scope(engine) as session:
        first = lifecycle.claim(session, pk=pk, now=now, lease_seconds=60).row
    with session_scope(engine) as session:
        second = lifecycle.claim(session, pk=pk, now=now, lease_seconds=60)
    assert first is not None and first.attempts == 1 and first.status == Status.ARCHIVING
    assert second.row is None
    assert second.busy_until is not None and second.busy_until > now


def test_an_expired_lease_can_be_taken_over_and_fences_the_old_owner(engine: Engine) -> None:
    pk = record(engine, make_tenant(engine), item()).pk
    now = utcnow()
    with session_scope(engine) as session:
        old = lifecycle.claim(session, pk=pk, now=now, lease_seconds=10).row
    with session_scope(engine) as session:
        new = lifecycle.claim(session, pk=pk, now=now + timedelta(seconds=11), lease_seconds=10).row
    assert old is not None and new is not None and new.attempts == 2
    with session_scope(engine) as session:
        assert not lifecycle.mark_archived(
            session, pk=pk, attempt=1, now=utcnow(), outcome=lifecycle.Transferred(size=1)
        )
        assert lifecycle.mark_archived(
            session, pk=pk, attempt=2, now=utcnow(), outcome=lifecycle.Transferred(size=2)
        )
    with session_scope(engine) as session:
        row = queries.get_row(session, pk=pk)
    assert row is not None and row.status == Status.ARCHIVED and row.size == 2


def test_archived_rows_are_never_claimed_again(engine: Engine) -> None:
    pk = record(engine, make_tenant(engine), item()).pk
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=pk, now=utcnow(), lease_seconds=60)
        lifecycle.mark_archived(
            session, pk=pk, attempt=1, now=utcnow(), outcome=lifecycle.Transferred()
        )
    with session_scope(engine) as session:
        later = lifecycle.claim(session, pk=pk, now=utcnow() + timedelta(days=1), lease_seconds=60)
    assert later.row is None and later.busy_until is None


def test_retrying_rows_are_claimable_and_failed_rows_are_not(engine: Engine) -> None:
    tenant = make_tenant(engine)
    retry_pk, fail_pk = record(engine, tenant, item("r")).pk, record(engine, tenant, item("f")).pk
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=retry_pk, now=utcnow(), lease_seconds=60)
        lifecycle.mark_retrying(
            session, pk=retry_pk, attempt=1, now=utcnow(), error="502", due=utcnow()
        )
        lifecycle.claim(session, pk=fail_pk, now=utcnow(), lease_seconds=60)
        lifecycle.mark_failed(session, pk=fail_pk, attempt=1, now=utcnow(), error="404 gone")
    with session_scope(engine) as session:
        again = lifecycle.claim(session, pk=retry_pk, now=utcnow(), lease_seconds=60).row
        assert again is not None and again.attempts == 2 and again.last_error == "502"
        assert lifecycle.claim(session, pk=fail_pk, now=utcnow(), lease_seconds=60).row is None


def test_a_retrying_row_waits_for_its_time_and_is_then_due_for_the_dispatcher(
    engine: Engine,
) -> None:
    pk = record(engine, make_tenant(engine), item()).pk
    now = utcnow()
    due = now + timedelta(minutes=5)
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=pk, now=now, lease_seconds=60)
        lifecycle.mark_retrying(session, pk=pk, attempt=1, now=now, error="503", due=due)
    with session_scope(engine) as session:
        # Not in the broker, but not due either: neither claimed early nor published early.
        assert lifecycle.claim(session, pk=pk, now=now, lease_seconds=60).row is None
        assert dispatch.unpublished(session, now=now, limit=10) == []
        assert dispatch.unpublished(session, now=due, limit=10) == [pk]
        assert sweep.due_pending_count(session, now=due) == 0  # not counted as in the broker
        again = lifecycle.claim(session, pk=pk, now=due, lease_seconds=60).row
    assert again is not None and again.attempts == 2 and again.crashes == 0


def test_taking_over_an_expired_lease_counts_a_crash(engine: Engine) -> None:
    pk = record(engine, make_tenant(engine), item()).pk
    now = utcnow()
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=pk, now=now, lease_seconds=10)
    crashes = []
    for n in range(1, 4):
        later = now + timedelta(seconds=11 * n)
        with session_scope(engine) as session:
            row = lifecycle.claim(session, pk=pk, now=later, lease_seconds=10).row
        assert row is not None
        crashes.append(row.crashes)
    assert crashes == [1, 2, 3]


def test_sweeper_queries_find_expired_leases_unqueued_and_long_waiting_rows(engine: Engine) -> None:
    tenant = make_tenant(engine)
    waiting = record(engine, tenant, item("waiting")).pk
    leased = record(engine, tenant, item("leased")).pk
    unqueued = record(engine, tenant, item("unqueued")).pk
    now = utcnow()
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=leased, now=now, lease_seconds=10)
    unmark(engine, unqueued)
    soon = now + timedelta(seconds=1)
    after_grace = now + dispatch.PUBLISH_GRACE + timedelta(seconds=1)
    with session_scope(engine) as session:
        assert sweep.expired_leases(session, now=now, limit=10) == []
        assert sweep.expired_leases(session, now=now + timedelta(seconds=11), limit=10) == [leased]
        # A row just recorded is its receiver's to publish; after the grace, the dispatcher's.
        assert dispatch.unpublished(session, now=soon, limit=10) == []
        assert dispatch.unpublished(session, now=after_grace, limit=10) == [unqueued]
        assert sweep.due_pending_count(session, now=soon) == 1
        assert sweep.published_before(session, before=now - timedelta(minutes=1), limit=10) == []
        assert sweep.published_before(session, before=soon, limit=10) == [waiting]
        assert sweep.oldest_due(session, queued_before=now - timedelta(minutes=5), limit=10) == []
        later = now + timedelta(hours=1)
        assert sweep.oldest_due(session, queued_before=later, limit=10) == [waiting]
        # Re-taking a lost row moves its mark; a row that moved on is left alone.
        assert sweep.retake(session, pks=[waiting, leased], before=soon, at=soon) == [waiting]
        assert sweep.retake(session, pks=[waiting], before=soon, at=soon) == []


def mark_of(engine: Engine, pk: int) -> tuple[datetime | None, datetime | None]:
    """A row's publish mark and its arrival time."""
    with session_scope(engine) as session:
        row = queries.get_row(session, pk=pk)
        assert row is not None
        return row.queued_at, row.received_at


def unmark(engine: Engine, pk: int) -> None:
    """As a receiver whose publish failed: its mark taken back."""
    marked, _ = mark_of(engine, pk)
    assert marked is not None
    with session_scope(engine) as session:
        lifecycle.mark_unqueued(session, pks=[pk], at=marked)
    assert mark_of(engine, pk)[0] is None


def test_a_new_row_is_recorded_marked_and_its_failed_publish_takes_the_mark_back(
    engine: Engine,
) -> None:
    tenant = make_tenant(engine)
    first = record(engine, tenant, item())
    assert first.created and first.needs_publish
    marked, received = mark_of(engine, first.pk)
    assert marked == received  # one write: the mark travels with the insert
    # The publish failed: the mark is taken back and Titan's retry publishes the row.
    unmark(engine, first.pk)
    again = record(engine, tenant, item())
    assert not again.created and again.needs_publish
    assert mark_of(engine, first.pk)[0] is not None
    # Published by that retry: the next duplicate needs no publish.
    assert not record(engine, tenant, item()).needs_publish


def test_a_redelivery_publishes_a_row_only_its_first_receiver_marked(engine: Engine) -> None:
    """Titan redelivers what was never answered 2xx: the first receiver may have died
    between its commit and its publish, so the redelivery publishes again, once."""
    tenant = make_tenant(engine)
    pk = record(engine, tenant, item()).pk
    redelivered = record(engine, tenant, item())
    assert not redelivered.created and redelivered.needs_publish
    marked, received = mark_of(engine, pk)
    assert marked is not None and received is not None
    assert marked > received  # the redelivery's own mark
    assert not record(engine, tenant, item()).needs_publish
    # Claimed by a worker: nothing to publish, however often Titan redelivers.
    claimed = record(engine, tenant, item("claimed")).pk
    with session_scope(engine) as session:
        assert lifecycle.claim(session, pk=claimed, now=utcnow(), lease_seconds=10).row
    assert not record(engine, tenant, item("claimed")).needs_publish
    # Archived on arrival (Titan persisted it): never published.
    done = record(engine, tenant, item("done", media_url="https://b.s3/x.jpg"))
    assert not done.needs_publish and mark_of(engine, done.pk)[0] is None
    assert not record(engine, tenant, item("done", media_url="https://b.s3/x.jpg")).needs_publish


def test_taking_a_mark_back_never_uncovers_a_newer_one(engine: Engine) -> None:
    tenant = make_tenant(engine)
    pk = record(engine, tenant, item()).pk
    first, _ = mark_of(engine, pk)
    assert first is not None
    later = first + timedelta(seconds=20)
    with session_scope(engine) as session:
        # The sweeper published it again meanwhile (its first publish was lost).
        assert sweep.retake(session, pks=[pk], before=later, at=later) == [pk]
        lifecycle.mark_unqueued(session, pks=[pk], at=first)  # the first publish's failure
    assert mark_of(engine, pk)[0] == later
    with session_scope(engine) as session:
        lifecycle.mark_unqueued(session, pks=[pk], at=later)
    assert mark_of(engine, pk)[0] is None
    with session_scope(engine) as session:
        assert dispatch.unpublished(session, now=later + dispatch.PUBLISH_GRACE, limit=5) == [pk]


def test_failed_rows_are_requeued_from_scratch(engine: Engine) -> None:
    tenant = make_tenant(engine)
    pk = record(engine, tenant, item()).pk
    with session_scope(engine) as session:
        lifecycle.claim(session, pk=pk, now=utcnow(), lease_seconds=60)
        lifecycle.mark_failed(session, pk=pk, attempt=1, now=utcnow(), error="gone")
    with session_scope(engine) as session:
        assert figures.backlog(session).counts == {"failed": 1}
        assert lifecycle.requeue_failed(
            session, tenant_id=tenant.id, media_ids=None, now=utcnow()
        ) == [pk]
    with session_scope(engine) as session:
        row = queries.get_row(session, pk=pk)
        assert row is not None and row.status == "queued" and row.attempts == 0
        backlog = figures.backlog(session)
    assert backlog.counts == {"queued": 1} and backlog.oldest_unarchived is not None


def test_lists_newest_first_with_keyset_paging(engine: Engine) -> None:
    tenant = make_tenant(engine)
    pks = [record(engine, tenant, item(f"m{i}")).pk for i in range(5)]
    with session_scope(engine) as session:
        page1 = queries.search(session, tenant_id=tenant.id, query=MediaQuery(limit=3))
        last = page1[-1]
        assert last.received_at is not None and last.pk is not None
        after = MediaQuery(limit=3, after=(last.received_at, last.pk))
        page2 = queries.search(session, tenant_id=tenant.id, query=after)
    assert [r.pk for r in page1 + page2] == pks[::-1]


def test_small_rows_are_batched_only_once_there_are_many() -> None:
    from archiver.queue import batches

    assert batches([1, 2, 3]) == [[1], [2], [3]]  # few: one per task, every worker busy
    assert batches(list(range(15))) == [[n] for n in range(15)]
    assert batches(list(range(40))) == [list(range(i, i + 5)) for i in range(0, 40, 5)]
    many = batches(list(range(1000)))
    assert all(len(b) == 16 for b in many[:-1]) and len(many[-1]) == 1000 % 16
    assert [pk for b in many for pk in b] == list(range(1000))
    assert batches([]) == []


def test_conversation_filters(engine: Engine) -> None:
    tenant = make_tenant(engine)
    group = item("g1")._replace(chat="120363@g.us", is_group=True, from_me=False)
    mine = item("d1")._replace(chat="+1555", is_group=False, from_me=True, sender_name="Shop")
    theirs = item("d2")._replace(chat="+1555", is_group=False, from_me=False)
    for it in (group, mine, theirs, item("unknown")):
        record(engine, tenant, it)

    def ids(**params: str) -> list[str]:
        with session_scope(engine) as session:
            rows = queries.search(
                session, tenant_id=tenant.id, query=queries.parse_query(params), info_only=True
            )
            return sorted(r.media_id for r in rows)

    assert ids(chat="+1555") == ["d1", "d2"]
    assert ids(chat="120363@g.us") == ["g1"]
    assert ids(isGroup="true") == ["g1"] and ids(isGroup="false") == ["d1", "d2"]
    assert ids(fromMe="true") == ["d1"] and ids(chat="+1555", fromMe="false") == ["d2"]
    with session_scope(engine) as session:
        row = queries.search(
            session, tenant_id=tenant.id, query=queries.parse_query({"fromMe": "true"})
        )[0]
        assert row.sender_name == "Shop"


def test_message_times_in_any_zone_are_stored_as_the_same_instant(engine: Engine) -> None:
    tenant = make_tenant(engine)
    instant = datetime(2026, 12, 6, 21, 30, 27, 425014, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    before = utcnow()
    pks = [
        record(engine, tenant, item(f"z{n}")._replace(message_at=instant.astimezone(zone))).pk
        for n, zone in enumerate(zones)
    ]
    with session_scope(engine) as session:
        rows = [queries.get_row(session, pk=pk) for pk in pks]
    for row in rows:
        assert row is not None and row.message_at is not None and row.received_at is not None
        assert row.message_at.replace(tzinfo=UTC) == instant
        assert before - timedelta(seconds=1) <= row.received_at.replace(tzinfo=UTC) <= utcnow()


def test_a_message_time_without_a_zone_is_refused(engine: Engine) -> None:
    naive = item("naive")._replace(message_at=datetime(2026, 12, 6, 21, 30))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        record(engine, make_tenant(engine), naive)


@pytest.mark.postgres
def test_a_redelivery_finds_its_rows_by_key_behind_a_backlog(
    tmp_path: Path, pg_admin_url: str | None
) -> None:
    """Statistics taken while nearly every row was archived, then a backlog of queued rows:
    the receiver's lookup and take of redelivered rows must still find them by key, not
    walk the backlog through the status index (the publish mark once did, 20 times a
    second)."""
    with migrated_database("postgres", tmp_path, pg_admin_url) as url:
        engine = make_engine(url)
        tenant = make_tenant(engine)
        engine.dispose()
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            required = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'media' AND is_nullable = 'NO' AND column_default IS NULL"
            ).fetchall()
            given = {"tenant_id": str(tenant.id)}
            typed = {"boolean": "false", "integer": "0", "bigint": "0"}
            columns = ", ".join(name for name, _ in required)

            def rows(status: str, prefix: str, count: int) -> None:
                values = ", ".join(
                    given.get(name)
                    or {"media_id": f"'{prefix}' || g", "status": f"'{status}'"}.get(name)
                    or ("'2026-12-07 00:00'" if kind.startswith("timestamp") else None)
                    or typed.get(kind, "'x'")
                    for name, kind in required
                )
                conn.execute(
                    f"INSERT INTO media ({columns}) SELECT {values} "  # noqa: S608
                    f"FROM generate_series(1, {count}) AS g"
                )

            rows("archived", "a", 20_000)
            conn.execute("COMMIT")
            conn.execute("ANALYZE media")
            rows("queued", "q", 3_000)
            newest = conn.execute(
                "SELECT tenant_id, media_id FROM media ORDER BY pk DESC LIMIT 5"
            ).fetchall()
            params = [[t for t, _ in newest], [m for _, m in newest], utcnow().replace(tzinfo=None)]
            explain = "EXPLAIN (FORMAT JSON) " + recording.PG_EXISTING
            explained = conn.execute(explain, params).fetchone()
            assert explained is not None
            (plan,) = explained
            scans = [node.get("Index Name") for node in _nodes(plan[0]["Plan"])]
            assert "media_pkey" in scans and "ix_media_status_lease" not in scans, scans
            # Never published (no mark): each is taken for a publish, once.
            found = conn.execute(recording.PG_EXISTING, params).fetchall()
            assert len(found) == 5 and all(taken for *_, taken in found)
            again = conn.execute(recording.PG_EXISTING, params).fetchall()
            assert len(again) == 5 and not any(taken for *_, taken in again)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


class RefusingBroker:
    """A broker that refuses every publish; ``meanwhile`` runs first (what else fails then)."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self._meanwhile = meanwhile

    def publish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        self._meanwhile()
        raise Unavailable("broker unavailable")

    async def apublish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        self.publish(routed, traces)


@pytest.mark.postgres
def test_a_mark_the_database_would_not_take_back_is_still_published_by_the_retry(
    tmp_path: Path, pg_admin_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker refuses the publish, then the database drops the receiver's connection
    before the mark is taken back: the delivery is refused as unavailable (Titan retries),
    said in a warning, and the retry publishes the row, which still carries only its first
    mark."""
    with migrated_database("postgres", tmp_path, pg_admin_url) as url:
        engine = make_engine(url)
        tenant = make_tenant(engine)
        assert tenant.id is not None
        plain = url.replace("postgresql+psycopg://", "postgresql://")

        def drop_the_receivers_connections() -> None:
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        async def write() -> list[Recorded | Unavailable]:
            writer = writer_for(
                engine,
                publisher=RefusingBroker(drop_the_receivers_connections),
                large_bytes=10 * 1024 * 1024,
            )
            try:
                return await writer.write([Arrival(tenant.id or 0, tenant.strategy, item())])
            finally:
                await writer.close()

        engine.dispose()  # only the writer's own connection is left to drop
        with caplog.at_level(logging.WARNING, logger="receiver.writers"):
            (answer,) = asyncio.run(write())
        assert isinstance(answer, Unavailable) and "broker" in str(answer)
        assert "could not take back the publish marks of 1 rows" in caplog.text
        with session_scope(engine) as session:
            row = queries.get_media(session, tenant_id=tenant.id, media_id="m1")
            assert row is not None and row.queued_at is not None
            assert row.queued_at == row.received_at
        retry = record(engine, tenant, item())
        assert not retry.created and retry.needs_publish
        engine.dispose()
