"""How a group-commit batch reaches the database and the broker.

``PostgresWriter`` (production): asyncio psycopg connections in autocommit mode, so the one
``INSERT ... SELECT unnest(...) RETURNING`` is its own durable transaction, a single round
trip with no thread hop; then one pipelined broker push. ``ThreadedWriter`` (SQLite, the
embedded default): a SQLAlchemy session in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from archiver import lifecycle, recording
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.queue import queue_for
from archiver.recording import Arrival, Batch, Recorded
from archiver.tables import utcnow
from receiver.publisher import Routed

log = logging.getLogger(__name__)
Results = list[Recorded | Unavailable]


class Writer(Protocol):
    async def write(self, arrivals: list[Arrival]) -> Results: ...

    async def close(self) -> None: ...


class Publishes(Protocol):
    """What a writer needs of the publisher (receiver/publisher.py's Publisher)."""

    def publish(self, routed: Sequence[Routed]) -> None: ...

    async def apublish(self, routed: Sequence[Routed]) -> None: ...


def writer_for(engine: Engine, *, publisher: Publishes, large_bytes: int) -> Writer:
    """The writer for ``engine``'s database: asyncio psycopg on PostgreSQL, else a thread."""
    if engine.dialect.name == "postgresql":
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresWriter(
            conninfo=conninfo, publisher=publisher, connections=8, large_bytes=large_bytes
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


class ThreadedWriter:
    def __init__(self, *, engine: Engine, publisher: Publishes, large_bytes: int) -> None:
        self._engine = engine
        self._publisher = publisher
        self._large_bytes = large_bytes

    async def write(self, arrivals: list[Arrival]) -> Results:
        return await run_in_threadpool(self._write, arrivals)

    def _write(self, arrivals: list[Arrival]) -> Results:
        with session_scope(self._engine) as session:
            recorded = recording.record_items(session, arrivals=arrivals, now=utcnow())
        to_publish = _routed(arrivals, recorded, self._large_bytes)
        try:
            self._publisher.publish(to_publish)
        except Unavailable as exc:
            # Flag the rows so Titan's retry or the sweeper queues them.
            with suppress(Unavailable), session_scope(self._engine) as session:
                for pk, _ in to_publish:
                    lifecycle.mark_unqueued(session, pk=pk)
            return _refuse_unpublished(recorded, exc)
        return list(recorded)

    async def close(self) -> None:
        return None


class PostgresWriter:
    def __init__(
        self, *, conninfo: str, publisher: Publishes, connections: int, large_bytes: int
    ) -> None:
        self._conninfo = conninfo
        self._publisher = publisher
        self._large_bytes = large_bytes
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[tuple[Any, ...]] | None] = (
            asyncio.LifoQueue()
        )
        for _ in range(connections):
            self._idle.put_nowait(None)  # connected on first use

    async def write(self, arrivals: list[Arrival]) -> Results:
        batch = Batch.of(arrivals, utcnow())
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
            async with conn.cursor() as cur:
                await cur.execute(recording.PG_INSERT, recording.pg_rows(batch.rows), prepare=True)
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
                await self._publisher.apublish(to_publish)
            except Unavailable as exc:
                with suppress(psycopg.Error):
                    await conn.execute(recording.PG_UNQUEUE, [[pk for pk, _ in to_publish]])
                return _refuse_unpublished(recorded, exc)
            return list(recorded)
        except psycopg.Error as exc:
            # Down, restarted, or a broken connection: drop it, answer 503, reconnect next time.
            if conn is not None:
                await conn.close()
            conn = None
            raise Unavailable("database unavailable") from exc
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                await conn.close()
