"""How a group-commit batch reaches the database and the broker.

``PostgresWriter`` (production): asyncio psycopg connections in autocommit mode, so the one
``INSERT ... SELECT FROM json_populate_recordset(...) RETURNING`` is its own durable
transaction, a single round trip with no thread hop; then one pipelined broker push. Rows
are recorded already marked published (archiver/media/recording.py), so a publish that
succeeds costs the database nothing more; one that fails takes its marks back.
``ThreadedWriter`` (SQLite, the embedded default): a SQLAlchemy session in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
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


# A publish failed and its rows' marks could not be taken back either: Titan's retry of the
# refused deliveries publishes them (``take_again``), else the sweeper, finding no message.
UNMARK_FAILED = (
    "could not take back the publish marks of %d rows; Titan's retry or the sweeper queues them"
)


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


class ThreadedWriter:
    def __init__(self, *, engine: Engine, publisher: Publishes, large_bytes: int) -> None:
        self._engine = engine
        self._publisher = publisher
        self._large_bytes = large_bytes

    async def write(self, arrivals: list[Arrival]) -> Results:
        return await run_in_threadpool(self._write, arrivals)

    def _write(self, arrivals: list[Arrival]) -> Results:
        now = utcnow()
        with session_scope(self._engine) as session:
            recorded = recording.record_items(session, arrivals=arrivals, now=now)
        to_publish = _routed(arrivals, recorded, self._large_bytes)
        try:
            self._publisher.publish(to_publish, _traces(arrivals, recorded))
        except Unavailable as exc:
            try:
                with session_scope(self._engine) as session:
                    lifecycle.mark_unqueued(session, pks=[pk for pk, _ in to_publish], at=now)
            except SQLAlchemyError:
                log.warning(UNMARK_FAILED, len(to_publish))
            return _refuse_unpublished(recorded, exc)
        return list(recorded)

    async def close(self) -> None:
        return None


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

    async def write(self, arrivals: list[Arrival]) -> Results:
        now = utcnow()
        batch = Batch.of(arrivals, now)
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
                        recording.PG_EXISTING,
                        [[t for t, _ in missing], [m for _, m in missing], naive_utc(now)],
                    )
                    existing = {(t, m): (pk, s, k) for pk, t, m, s, k in await cur.fetchall()}
            recorded = batch.answers(created, existing)
            to_publish = _routed(arrivals, recorded, self._large_bytes)
            try:
                await self._publisher.apublish(to_publish, _traces(arrivals, recorded))
            except Unavailable as exc:
                try:
                    await conn.execute(
                        recording.PG_UNMARK, [[pk for pk, _ in to_publish], naive_utc(now)]
                    )
                except psycopg.Error:
                    log.warning(UNMARK_FAILED, len(to_publish))
                    await conn.close()
                    conn = None
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

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5
        )
        if not self._prepare:
            conn.prepare_threshold = None  # psycopg prepares repeated queries by itself too
        return conn

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                await conn.close()
