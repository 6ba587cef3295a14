"""Group commit: concurrent webhook accepts share one transaction and one broker push.

Requests wait on a future while a background task drains the queue into batches: one
multi-row INSERT, one COMMIT, one pipelined publish per batch. Nothing is answered before
its batch is committed and published. With no artificial delay, a lone request is flushed
at once; under load, requests pile up while a flush runs and the next batch is larger.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from archiver import media
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.media import Arrival, Recorded
from archiver.publisher import Publisher
from archiver.tables import utcnow

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    arrival: Arrival
    future: asyncio.Future[Recorded]


class GroupCommit:
    def __init__(
        self, *, engine: Engine, publisher: Publisher, max_batch: int = 500, flushes: int = 4
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(flushes)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, arrival: Arrival) -> Recorded:
        """Durably record (and queue) one arrival; raises Unavailable if that failed."""
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(arrival, future))
        return await future

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Flush what is queued, then stop (the lifespan's shutdown)."""
        while not self._queue.empty() or self._flushing:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            self._runner.cancel()
            with suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._slots.acquire()
            # Take everything that arrived while we waited for a slot: that is the grouping.
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            results = await run_in_threadpool(self._write, [p.arrival for p in batch])
        except Unavailable as exc:
            results = [exc] * len(batch)
        except Exception as exc:
            log.exception("group commit failed")
            results = [exc] * len(batch)
        finally:
            self._slots.release()
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _write(self, arrivals: list[Arrival]) -> list[Recorded | Unavailable]:
        with session_scope(self._engine) as session:
            recorded = media.record_items(session, arrivals=arrivals, now=utcnow())
        to_publish = sorted({r.pk for r in recorded if r.needs_publish})
        try:
            self._publisher.publish(to_publish)
        except Unavailable as exc:
            # Committed but not queued: flag the rows so a retry or the sweeper queues them,
            # and refuse exactly the requests that needed the publish (503, Titan retries).
            with suppress(Unavailable), session_scope(self._engine) as session:
                for pk in to_publish:
                    media.mark_unqueued(session, pk=pk)
            return [exc if r.needs_publish else r for r in recorded]
        return list(recorded)
