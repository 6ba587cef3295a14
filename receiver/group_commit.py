"""Group commit: concurrent webhook accepts share one transaction and one broker push.

Requests wait on a future while a background task drains the queue into batches: one
multi-row INSERT, one COMMIT, one pipelined publish per batch. Nothing is answered before
its batch is committed and published. With no artificial delay, a lone request is flushed
at once; under load, requests pile up while a flush runs and the next batch is larger.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

from opentelemetry.trace import Span

from archiver.errors import Unavailable
from archiver.infra import tracing
from archiver.media.recording import Arrival, Recorded
from receiver.writers import Writer

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    arrival: Arrival
    future: asyncio.Future[Recorded]


def _record_spans(arrivals: list[Arrival]) -> list[Span | None]:
    """A ``webhook record`` span per traced request: the shared insert (and publish), with
    how many requests shared it."""
    size = len(arrivals)
    return [
        tracing.start(
            "webhook record",
            parent=a.trace,
            attributes={"media.id": a.item.media_id, "archiver.batch_size": size},
        )
        if a.trace is not None
        else None
        for a in arrivals
    ]


class GroupCommit:
    def __init__(self, *, writer: Writer, max_batch: int = 500, flushes: int = 4) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(flushes)
        # What waits for a batch: a deque and one future the runner sleeps on while it is
        # empty, not an asyncio.Queue (its put and get coroutines, getter futures and
        # wake-ups were 4 % of the receiver's profile; docs/performance.md).
        self._pending: deque[_Pending] = deque()
        self._idle: asyncio.Future[None] | None = None  # set while the runner waits
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # start()'s, where submit runs
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, arrival: Arrival) -> Recorded:
        """Durably record (and queue) one arrival; raises Unavailable if that failed."""
        # The loop kept by start(): asking for the running one is a getpid() system call
        # on Python 3.11, once per webhook.
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()
        self._pending.append(_Pending(arrival, future))
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        return await future

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._runner = self._loop.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Flush what is queued, then stop (the lifespan's shutdown)."""
        while self._pending or self._flushing:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            self._runner.cancel()
            with suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending
        while True:
            while not pending:
                self._idle = loop.create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None
            await self._slots.acquire()
            # Take everything that arrived while we waited for a slot: that is the grouping.
            batch = [pending.popleft() for _ in range(min(len(pending), self._max_batch))]
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _write_alone(self, arrival: Arrival) -> Recorded | Exception:
        try:
            return (await self._writer.write([arrival]))[0]
        except Unavailable as exc:
            return exc
        except Exception:
            log.exception("recording failed; answering 503 so Titan retries")
            return Unavailable("internal error while recording")

    async def _flush(self, batch: list[_Pending]) -> None:
        arrivals = [p.arrival for p in batch]
        spans = _record_spans(arrivals) if tracing.enabled() else None
        if spans is not None:
            # Each request's publish is a child of its own record span.
            arrivals = [
                a._replace(trace=tracing.traceparent(s) if s is not None else a.trace)
                for a, s in zip(arrivals, spans, strict=True)
            ]
        try:
            results: list[Recorded | Exception] = list(await self._writer.write(arrivals))
        except Unavailable as exc:
            results = [exc] * len(batch)
        except Exception:
            if len(batch) == 1:
                log.exception("recording failed; answering 503 so Titan retries")
                results = [Unavailable("internal error while recording")]
            else:
                # One bad arrival must not fail its batch-mates: write each on its own.
                results = [await self._write_alone(p.arrival) for p in batch]
        finally:
            self._slots.release()
        if spans is not None:
            for opened, result in zip(spans, results, strict=True):
                failed = isinstance(result, BaseException)
                tracing.end(opened, error=str(result) if failed else None)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
