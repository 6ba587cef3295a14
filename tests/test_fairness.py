"""Fair across tenants, polite to Titan (archiver/scheduling/fairness.py): a tenant over its cap of
concurrent transfers waits while the others go on, and Titan's rate limit holds the whole
tenant. The core against SQLite and PostgreSQL; then real processes (simulator, receiver,
a worker of two slots running beat, moto) with ARCHIVER_TENANT_MAX_CONCURRENCY=1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.media import lifecycle
from archiver.scheduling import dispatch, fairness
from archiver.tables import Media, Status, Tenant, utcnow
from devstack.fixtures import TenantSetup, add_tenant, process_env
from devstack.rig import RedisDatabases, running_rig
from tests.conftest import migrated_database
from tests.test_media_rows import item, make_tenant, record
from tests.test_tenant_pause import Stack, _wait

# -- the core ---------------------------------------------------------------------------


def _claim(engine: Engine, pks: list[int]) -> list[Media]:
    with session_scope(engine) as session:
        claims = lifecycle.claim_many(session, pks=pks, now=utcnow(), lease_seconds=60)
        rows = [c.row for c in claims.values() if c.row is not None]
        for row in rows:
            session.expunge(row)
        return rows


def test_rows_over_their_tenants_cap_are_handed_back_without_spending_an_attempt(
    engine: Engine,
) -> None:
    a, b = make_tenant(engine, "a"), make_tenant(engine, "b")
    a_pks = [record(engine, a, item(f"a{i}")).pk for i in range(3)]
    b_pk = record(engine, b, item("b0")).pk
    now = utcnow()
    first = _claim(engine, a_pks[:2])
    with session_scope(engine) as session:
        admitted = fairness.admit(session, rows=first, cap=2, now=now)
    assert [r.pk for r in admitted.admitted] == a_pks[:2] and admitted.deferred == []
    # A third transfer of A (and one of B) claimed by another worker: A's is over the cap.
    later = _claim(engine, [a_pks[2], b_pk])
    with session_scope(engine) as session:
        admitted = fairness.admit(session, rows=later, cap=2, now=now)
    assert [r.pk for r in admitted.admitted] == [b_pk]
    assert [(r.pk, why) for r, _, why in admitted.deferred] == [
        (a_pks[2], "tenant at its cap of 2 transfers")
    ]
    with session_scope(engine) as session:
        row = session.get(Media, a_pks[2])
        assert row is not None
        assert (row.status, row.attempts, row.queued_at) == (Status.QUEUED, 0, None)
        # The dispatcher publishes it only once A has a free slot again.
        soon = now + timedelta(seconds=1)
        assert dispatch.unpublished(session, now=soon, limit=10) == [a_pks[2]]
        assert dispatch.within_caps(session, pks=[a_pks[2]], cap=2, now=soon) == []
        assert lifecycle.mark_archived(
            session, pk=a_pks[0], attempt=1, now=soon, outcome=lifecycle.Transferred(size=1)
        )
    with session_scope(engine) as session:
        assert dispatch.within_caps(session, pks=[a_pks[2]], cap=2, now=soon) == [a_pks[2]]
    # Free slots per tenant: the cap less live leases and rows already in the broker.
    with session_scope(engine) as session:
        assert fairness.free_slots(session, cap=2, now=soon) == {a.id: 1, b.id: 1}


def test_a_rate_limited_tenant_is_held_until_the_time_titan_named(engine: Engine) -> None:
    a = make_tenant(engine, "a")
    pk = record(engine, a, item("a0")).pk
    now = utcnow()
    until = now + timedelta(seconds=30)
    with session_scope(engine) as session:
        assert fairness.hold(session, tenant_id=a.id or 0, until=until)
        # An earlier hold does not shorten a later one.
        assert not fairness.hold(session, tenant_id=a.id or 0, until=now + timedelta(seconds=5))
    rows = _claim(engine, [pk])
    with session_scope(engine) as session:
        admitted = fairness.admit(session, rows=rows, cap=0, now=now)
    assert admitted.admitted == [] and admitted.deferred[0][1] == until
    with session_scope(engine) as session:
        assert dispatch.unpublished(session, now=now + timedelta(seconds=29), limit=5) == []
        assert dispatch.unpublished(session, now=until + timedelta(seconds=1), limit=5) == [pk]


# -- real processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, s3_endpoint: str
) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("fair")
    broker = redis_dbs.take()
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(database_url, broker, ARCHIVER_TENANT_MAX_CONCURRENCY="1")
        with running_rig(
            "fair", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp
        ) as rig:
            yield Stack(**vars(rig))


def _send(stack: Stack, tenant: TenantSetup, kind: str, size: int, count: int) -> None:
    stack.send(tenant, *(stack.media(tenant, kind, size=size) for _ in range(count)))


def _tenant_id(stack: Stack, name: str) -> int:
    engine = make_engine(stack.database_url)
    try:
        with session_scope(engine) as session:
            found = session.exec(select(Tenant.id).where(Tenant.name == name)).one()
            assert found is not None
            return found
    finally:
        engine.dispose()


def test_a_tenants_burst_holds_one_slot_and_the_other_tenant_goes_through(stack: Stack) -> None:
    a = add_tenant(stack.database_url, sim=stack.sim, s3_endpoint=stack.s3_endpoint, name="burst-a")
    b = add_tenant(stack.database_url, sim=stack.sim, s3_endpoint=stack.s3_endpoint, name="calm-b")
    stack.sim.set_faults(slow_ms=40)  # every download chunk takes a while: transfers overlap
    try:
        _send(stack, a, "video", 1_500_000, 4)
        _send(stack, b, "image", 20_000, 3)
        _wait(lambda: all(r.status == "archived" for r in stack.row_list(b)), "B archived", 60)
        a_left = sum(r.status != "archived" for r in stack.row_list(a))
        _wait(lambda: all(r.status == "archived" for r in stack.row_list(a)), "A archived", 120)
    finally:
        stack.sim.set_faults()
    # Transfers as Titan sees them: downloads of A's media served at the same time. (A row
    # claimed over the cap shows `archiving` for the moment until it is handed back; it
    # never reaches Titan, so the table is not the measure.)
    most = stack.sim.stats().get(f"max_downloads_at_once:{a.name}", 0)
    assert most == 1, f"tenant A had {most} transfers at once with a cap of 1"
    assert a_left > 0, "B's photos waited for A's whole burst"
    assert all(r.attempts == 1 for r in stack.row_list(a)), "deferrals spent attempts"


def test_titans_rate_limit_holds_every_transfer_of_the_tenant(stack: Stack) -> None:
    c = add_tenant(
        stack.database_url, sim=stack.sim, s3_endpoint=stack.s3_endpoint, name="limited-c"
    )
    stack.sim.set_faults(rate_limit=1, retry_after=3)
    try:
        _send(stack, c, "image", 20_000, 3)
        _wait(lambda: all(r.status == "archived" for r in stack.row_list(c)), "C archived", 60)
    finally:
        stack.sim.set_faults()
    assert stack.sim.stats().get("answered_429", 0) >= 1
    engine = make_engine(stack.database_url)
    try:
        with session_scope(engine) as session:
            tenant = session.exec(select(Tenant).where(Tenant.name == c.name)).one()
    finally:
        engine.dispose()
    held = tenant.throttled_until
    assert held is not None
    # No transfer of C finished before Titan's Retry-After had passed: all were held.
    rows = stack.row_list(c)
    assert all(r.archived_at is not None and r.archived_at >= held for r in rows)
    assert max(r.attempts for r in rows) == 2 and sum(r.attempts == 2 for r in rows) == 1


def test_an_exhausted_rate_window_holds_the_tenant_for_a_moment(stack: Stack) -> None:
    d = add_tenant(
        stack.database_url, sim=stack.sim, s3_endpoint=stack.s3_endpoint, name="window-d"
    )
    stack.sim.set_faults(exhausted=1)
    try:
        _send(stack, d, "image", 20_000, 1)
        _wait(lambda: all(r.status == "archived" for r in stack.row_list(d)), "D archived", 60)
    finally:
        stack.sim.set_faults()
    engine = make_engine(stack.database_url)
    try:
        with session_scope(engine) as session:
            tenant = session.exec(select(Tenant).where(Tenant.name == d.name)).one()
    finally:
        engine.dispose()
    assert tenant.throttled_until is not None  # X-RateLimit-Remaining: 0 was heeded
