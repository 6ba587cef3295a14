"""Publish archive tasks in bulk: one pipelined round-trip per batch on Redis.

Celery's own publish path costs about 0.5 ms per message (measured: bench/ingest.py and
docs/performance.md), more than the rest of a webhook accept. On a Redis broker the
receiver therefore writes Celery's documented task message (protocol v2) itself and pushes
a whole batch in one round trip. Any other broker (RabbitMQ) goes through Celery as usual.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from celery import Celery
from opentelemetry.trace import Span
from redis.asyncio.connection import AbstractConnection as AsyncConnection

from archiver.errors import Unavailable
from archiver.infra import tracing
from archiver.infra.broker import publish_task
from archiver.queue import (
    ARCHIVE_BATCH_TASK,
    ARCHIVE_QUEUE,
    ARCHIVE_TASK,
    batches,
)

Routed = tuple[int, str]  # (media row pk, queue name)
Traces = dict[int, str]  # media row pk -> the W3C traceparent its publish continues
Message = tuple[str, list[Any], str]  # (task name, args, queue)

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Where replies would go (Celery writes its app's thread oid); one per process, as there.
_REPLY_TO = str(uuid.uuid4())


def task_message(
    args: list[Any],
    *,
    task: str = ARCHIVE_TASK,
    queue: str = ARCHIVE_QUEUE,
    origin: str = "",
    headers: dict[str, Any] | None = None,
    ids: tuple[str, str] | None = None,
) -> bytes:
    """Celery protocol v2 for ``task(*args)``, as kombu's Redis transport stores it;
    ``headers``: more message headers (a task reads them as ``self.request.<name>``);
    ``ids``: the task id and delivery tag (random UUIDs, made here when not given)."""
    task_id, tag = ids or (str(uuid.uuid4()), str(uuid.uuid4()))
    body = base64.b64encode(orjson.dumps([args, {}, _EMBED])).decode()
    return orjson.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(args),
                "kwargsrepr": "{}",
                "origin": origin,
                "ignore_result": None,  # as Celery's send_task writes it (tests/test_publisher.py)
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                **(headers or {}),
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
                "reply_to": _REPLY_TO,
            },
        }
    )


def random_ids(count: int) -> list[tuple[str, str]]:
    """``count`` pairs of version-4 UUIDs (task id, delivery tag) from one read of the
    system's random source, not two per message. Written out directly, as ``uuid.UUID``
    would (its version and variant bits set, its hyphens): building a UUID object per id
    was two thirds of the cost (8 pairs: 39 to 14 us)."""
    raw = bytearray(os.urandom(32 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # variant: RFC 4122
    h = raw.hex()
    made = [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 64 * count, 32)
    ]
    return list(zip(made[::2], made[1::2], strict=True))


def _tasks(routed: Sequence[Routed]) -> list[Message]:
    """(task, args, queue) per message: large rows one by one, small ones in batches."""
    small = [pk for pk, queue in routed if queue == ARCHIVE_QUEUE]
    messages: list[Message] = [
        (ARCHIVE_TASK, [pk], queue) for pk, queue in routed if queue != ARCHIVE_QUEUE
    ]
    for batch in batches(small):
        if len(batch) == 1:
            messages.append((ARCHIVE_TASK, batch, ARCHIVE_QUEUE))
        else:
            messages.append((ARCHIVE_BATCH_TASK, [batch], ARCHIVE_QUEUE))
    return messages


class PublishSpans:
    """The messages to publish, each with its extra headers: with tracing, an
    ``archive publish`` span per traced row (child of its request's span) and the headers
    that carry them: ``traceparent`` (W3C; a batch message names its first row's) and, on a
    message of several rows, ``traceparents`` (row pk -> traceparent)."""

    def __init__(self, messages: Sequence[Message], traces: Traces | None, system: str) -> None:
        self.messages: list[tuple[Message, dict[str, Any] | None]] = []
        self._spans: list[Span | None] = []
        for message in messages:
            self.messages.append(
                (message, self._traced(message, traces, system) if traces else None)
            )

    def _traced(self, message: Message, traces: Traces, system: str) -> dict[str, Any] | None:
        task, args, queue = message
        pks = args[0] if task == ARCHIVE_BATCH_TASK else args[:1]
        own: dict[str, str] = {}
        for pk in pks:
            parent = traces.get(pk)
            if parent is None:
                continue
            opened = tracing.start(
                "archive publish",
                kind=tracing.PRODUCER,
                parent=parent,
                attributes={
                    "messaging.system": system,
                    "messaging.operation.type": "send",
                    "messaging.destination.name": queue,
                    "messaging.batch.message_count": len(pks),
                    "archiver.media_pk": pk,
                },
            )
            self._spans.append(opened)
            header = tracing.traceparent(opened) if opened is not None else None
            if header is not None:
                own[str(pk)] = header
        if not own:
            return None
        headers: dict[str, Any] = {"traceparent": next(iter(own.values()))}
        if len(pks) > 1:
            headers["traceparents"] = own
        return headers

    def end(self, error: str | None = None) -> None:
        for opened in self._spans:
            tracing.end(opened, error=error)


class Publisher:
    """Queues archive tasks for many rows at once; one per process."""

    def __init__(self, app: Celery, broker_url: str) -> None:
        self._app = app
        self._origin = f"receiver@{socket.gethostname()}:{os.getpid()}"
        is_redis = broker_url.startswith(("redis://", "rediss://", "unix://"))
        self._system = "redis" if is_redis else "rabbitmq"
        self._redis = (
            redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
            if is_redis
            else None
        )
        # apublish's connections: made by redis-py (URL, auth, TLS, database, RESP), used
        # directly. Its pipeline and pool cost 0.2 ms of CPU a push against 0.1 ms for the
        # same command on a connection (docs/performance.md), once per group-commit batch.
        self._connections = (
            aioredis.ConnectionPool.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
            if is_redis
            else None
        )
        self._idle: list[AsyncConnection] = []  # connected, no command under way

    def publish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        """Queue ``routed``; ``traces``: each row's traceparent, when its request is traced."""
        if not routed:
            return
        spans = PublishSpans(_tasks(routed), traces, self._system)
        try:
            if self._redis is None:
                for (task, args, queue), extra in spans.messages:
                    publish_task(self._app, task=task, args=args, queue=queue, headers=extra)
            else:
                pipe = self._redis.pipeline(transaction=False)
                for queue, messages in self._by_queue(spans).items():
                    pipe.lpush(queue, *messages)
                pipe.execute()
        except (redis.RedisError, Unavailable) as exc:
            spans.end(error="broker unavailable")
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable("broker unavailable") from exc
        spans.end()

    async def apublish(self, routed: Sequence[Routed], traces: Traces | None = None) -> None:
        """``publish`` without leaving the event loop (one pipelined round-trip on Redis)."""
        if not routed:
            return
        if self._connections is None:
            await asyncio.to_thread(self.publish, routed, traces)
            return
        spans = PublishSpans(_tasks(routed), traces, self._system)
        commands = [
            ("LPUSH", queue, *messages) for queue, messages in self._by_queue(spans).items()
        ]
        kept = self._idle.pop() if self._idle else None
        try:
            try:
                await self._push(commands, kept or self._new_connection())
            except redis.ConnectionError:
                if kept is None:
                    raise
                # Idle since its last push, it may have been closed meanwhile (a server
                # restart, an idle timeout): once more on a new connection.
                await self._push(commands, self._new_connection())
        except (redis.RedisError, OSError) as exc:
            spans.end(error="broker unavailable")
            raise Unavailable("broker unavailable") from exc
        spans.end()

    def _new_connection(self) -> AsyncConnection:
        assert self._connections is not None
        made: AsyncConnection = self._connections.make_connection()  # type: ignore[no-untyped-call]
        return made

    async def _push(self, commands: list[tuple[Any, ...]], conn: AsyncConnection) -> None:
        """``commands`` in one write on ``conn``, their replies read; it goes back to the
        idle connections only after a complete exchange."""
        done = False
        try:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                await conn.read_response()
            done = True
        finally:
            if done:
                self._idle.append(conn)
            else:  # a reply may still be on its way: never reuse this one
                await conn.disconnect(nowait=True)

    def _by_queue(self, spans: PublishSpans) -> dict[str, list[bytes]]:
        """Each queue's messages, in order: one LPUSH of them all per queue (one command to
        pack and one reply to read, not one per message; a consumer pops them in the same
        order as from one LPUSH each)."""
        queues: dict[str, list[bytes]] = {}
        for ((task, args, queue), headers), ids in zip(
            spans.messages, random_ids(len(spans.messages)), strict=True
        ):
            queues.setdefault(queue, []).append(
                task_message(
                    args, task=task, queue=queue, origin=self._origin, headers=headers, ids=ids
                )
            )
        return queues

    def close(self) -> None:
        """Close the blocking client (for callers that never used ``apublish``)."""
        if self._redis is not None:
            self._redis.close()

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().disconnect()
        if self._redis is not None:
            self._redis.close()
