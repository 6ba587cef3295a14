"""How a group-commit batch reaches the database and the broker.

``PostgresWriter`` (production): asyncio psycopg connections in autocommit mode, so the one
``INSERT ... SELECT unnest(...) RETURNING`` is its own durable transaction, a single round
trip with no thread hop; then one pipelined broker push. ``ThreadedWriter`` (SQLite, the
embedded default): a SQLAlchemy session in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from archiver.errors import Unavailable
from archiver.infra import tracing
from archiver.infra.db import session_scope, transaction_pooled
from archiver.media import lifecycle, recording
from archiver.media.recording import Arrival, Batch, Recorded
from archiver.queue import queue_for
from archiver.tables import naive_utc, utcnow
from receiver.publisher import Routed, Traces

log = logging.getLogger(__name__)
Results = list[Recorded | Unavailable]


class Writer(Protocol):
    async def write(self, arrivals: list[Arrival]) -> Results: ...

    async def close(self) -> None: ...


class Publishes(Protocol):
    """What a writer needs of the publisher (receiver/publisher.py's Publisher)."""

    def publish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None: ...

    async def apublish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None: ...


def writer_for(engine: Engine, *, publisher: Publishes, large_bytes: int) -> Writer:
    """The writer for ``engine``'s database: asyncio psycopg on PostgreSQL, else a thread."""
    if engine.dialect.name == "postgresql":
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresWriter(
            conninfo=conninfo,
            publisher=publisher,
            connections=8,
            large_bytes=large_bytes,
            prepare=not transaction_pooled(engine),
        )
    return ThreadedWriter(engine=engine, publisher=publisher, large_bytes=large_bytes)


def _refuse_unpublished(recorded: list[Recorded], exc: Unavailable) -> Results:
    """Committed but not queued: refuse exactly the requests that needed the publish."""
    return [exc if r.needs_publish else r for r in recorded]


def _routed(arrivals: list[Arrival], recorded: list[Recorded], large_bytes: int) -> list[Routed]:
    """Each row to publish once, on the small or the large queue by its announced size."""
    routed: dict[int, str] = {}
    for arrival, answer in zip(arrivals, recorded, strict=True):
        if answer.needs_publish and answer.pk not in routed:
            item = arrival.item
            routed[answer.pk] = queue_for(
                item.file_length, item.message_type, large_bytes=large_bytes
            )
    return sorted(routed.items())


def _traces(arrivals: list[Arrival], recorded: list[Recorded]) -> Traces | None:
    """Each published row's traceparent (the first request that carried one), when traced."""
    if not tracing.enabled():
        return None
    traces: Traces = {}
    for arrival, answer in zip(arrivals, recorded, strict=True):
        if arrival.trace is not None and answer.needs_publish:
            traces.setdefault(answer.pk, arrival.trace)
    return traces or None


MARK_EVERY = 0.05  # seconds: publish marks of concurrent batches share one UPDATE


class Marks:
    """Marks rows published, coalescing the batches of the last ``MARK_EVERY`` seconds into
    one statement off the request's path (measured in docs/performance.md: one UPDATE per
    batch halved ingest). A mark that never lands (the process killed, the database away)
    costs the row one extra broker message later (the dispatcher's), never the row."""

    def __init__(self, mark: Callable[[list[int]], Awaitable[None]]) -> None:
        self._mark = mark
        self._pks: list[int] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, pks: list[int]) -> None:
        if not pks:
            return
        self._pks += pks
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="publish-marks")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(MARK_EVERY)
            await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        pks, self._pks = self._pks, []
        if pks:
            try:
                await self._mark(pks)
            except Exception:
                log.warning("could not mark %d rows published; the dispatcher will", len(pks))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


class ThreadedWriter:
    def __init__(self, *, engine: Engine, publisher: Publishes, large_bytes: int) -> None:
        self._engine = engine
        self._publisher = publisher
        self._large_bytes = large_bytes
        self._marks = Marks(self._mark)

    async def write(self, arrivals: list[Arrival]) -> Results:
        results, published = await run_in_threadpool(self._write, arrivals)
        self._marks.add(published)
        return results

    async def _mark(self, pks: list[int]) -> None:
        def mark() -> None:
            with session_scope(self._engine) as session:
                lifecycle.mark_published(session, pks=pks, at=utcnow())

        await run_in_threadpool(mark)

    def _write(self, arrivals: list[Arrival]) -> tuple[Results, list[int]]:
        with session_scope(self._engine) as session:
            recorded = recording.record_items(session, arrivals=arrivals, now=utcnow())
        to_publish = _routed(arrivals, recorded, self._large_bytes)
        try:
            self._publisher.publish(to_publish, _traces(arrivals, recorded))
        except Unavailable as exc:
            # Committed, not published (queued_at stays NULL): Titan's retry or the
            # dispatcher queues them.
            return _refuse_unpublished(recorded, exc), []
        return list(recorded), [pk for pk, _ in to_publish]

    async def close(self) -> None:
        await self._marks.close()


class PostgresWriter:
    def __init__(
        self,
        *,
        conninfo: str,
        publisher: Publishes,
        connections: int,
        large_bytes: int,
        prepare: bool = True,
    ) -> None:
        self._conninfo = conninfo
        # Prepared once per connection: the insert's plan is reused; not behind a
        # transaction-pooling PgBouncer, where the next use may land on another server.
        self._prepare = prepare
        self._publisher = publisher
        self._large_bytes = large_bytes
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[tuple[Any, ...]] | None] = (
            asyncio.LifoQueue()
        )
        for _ in range(connections):
            self._idle.put_nowait(None)  # connected on first use
        self._marks = Marks(self._mark)

    async def write(self, arrivals: list[Arrival]) -> Results:
        batch = Batch.of(arrivals, utcnow())
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            async with conn.cursor() as cur:
                await cur.execute(
                    recording.PG_INSERT, recording.pg_rows(batch.rows), prepare=self._prepare
                )
                created = {(t, m): pk for pk, t, m in await cur.fetchall()}
                existing = {}
                missing = batch.missing(created)
                if missing:
                    await cur.execute(
                        recording.PG_EXISTING, [[t for t, _ in missing], [m for _, m in missing]]
                    )
                    existing = {(t, m): (pk, s, q) for pk, t, m, s, q in await cur.fetchall()}
            recorded = batch.answers(created, existing)
            to_publish = _routed(arrivals, recorded, self._large_bytes)
            try:
                await self._publisher.apublish(to_publish, _traces(arrivals, recorded))
            except Unavailable as exc:
                # Committed, not published (queued_at stays NULL): Titan's retry or the
                # dispatcher queues them.
                return _refuse_unpublished(recorded, exc)
            self._marks.add([pk for pk, _ in to_publish])  # known to be in the broker now
            return list(recorded)
        except psycopg.Error as exc:
            # Down, restarted, or a broken connection: drop it, answer 503, reconnect next time.
            if conn is not None:
                await conn.close()
            conn = None
            raise Unavailable("database unavailable") from exc
        finally:
            self._idle.put_nowait(conn)

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5
        )
        if not self._prepare:
            conn.prepare_threshold = None  # psycopg prepares repeated queries by itself too
        return conn

    async def _mark(self, pks: list[int]) -> None:
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            await conn.execute(
                recording.PG_MARK_PUBLISHED, [naive_utc(utcnow()), pks], prepare=self._prepare
            )
        except psycopg.Error:
            if conn is not None:
                await conn.close()
            conn = None
            raise
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        await self._marks.close()
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                await conn.close()
