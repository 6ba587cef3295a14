"""A row whose attempts keep dying with their worker ends failed, not redelivered forever."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, update
from sqlmodel import col

from archiver.infra.broker import make_celery
from archiver.infra.db import session_scope
from archiver.media import lifecycle
from archiver.media import query as queries
from archiver.tables import Media, utcnow
from devstack.fixtures import settings_for
from tests.test_media_rows import item, make_tenant, record
from worker.archive import Result, archive_rows
from worker.resources import WorkerResources


def test_a_row_whose_workers_keep_dying_ends_failed_after_max_attempts(
    engine: Engine, database_url: str
) -> None:
    settings = settings_for(database_url, max_attempts=3, lease_seconds=10)
    res = WorkerResources.build(settings, make_celery(settings), engine)
    pk = record(engine, make_tenant(engine), item("poison")).pk
    for _ in range(3):
        # A worker claims the row, then dies without a word: its lease simply runs out.
        with session_scope(engine) as session:
            assert lifecycle.claim(session, pk=pk, now=utcnow(), lease_seconds=10).row is not None
            session.execute(
                update(Media)
                .where(col(Media.pk) == pk)
                .values(lease_until=utcnow() - timedelta(seconds=1))
            )
    result = _archive(res, pk)
    assert result.outcome == "failed" and "gave up after 3 attempts" in result.detail
    with session_scope(engine) as session:
        row = queries.get_row(session, pk=pk)
    assert row is not None and row.status == "failed" and row.attempts == 4
    assert _archive(res, pk).outcome == "skipped"


def test_a_batch_claims_what_it_can_and_reports_every_row_once(
    engine: Engine, database_url: str
) -> None:
    from worker.archive import archive_rows

    settings = settings_for(database_url, max_attempts=1, lease_seconds=10)
    res = WorkerResources.build(settings, make_celery(settings), engine)
    tenant = make_tenant(engine)
    spent, held, done = (record(engine, tenant, item(name)).pk for name in ("a", "b", "c"))
    with session_scope(engine) as session:
        for pk in (spent, held, done):
            assert lifecycle.claim(session, pk=pk, now=utcnow(), lease_seconds=10).row is not None
        # spent: its worker died (lease over, attempts used up); held: another worker is on it.
        session.execute(
            update(Media)
            .where(col(Media.pk) == spent)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
        lifecycle.mark_failed(session, pk=done, attempt=1, now=utcnow(), error="404")
    results = dict(archive_rows(res, [spent, held, done, spent]))
    assert list(results) == [spent, held, done]  # named twice, reported once
    assert (
        results[spent].outcome == "failed" and "gave up after 1 attempts" in results[spent].detail
    )
    assert results[held].outcome == "busy" and results[held].retry_in is not None
    assert results[done].outcome == "skipped"


def _archive(res: WorkerResources, pk: int) -> Result:
    ((_, result),) = archive_rows(res, [pk])
    return result
