"""The broker side of the queue contract: the Celery app's configuration, publishing through
Celery, and what the broker holds (queue depths, live workers).

The receiver publishes by task *name*, so it never imports worker code.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, TypedDict, cast

import redis
from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError, KombuError, OperationalError

from archiver.errors import Unavailable
from archiver.queue import (
    ARCHIVE_BATCH_TASK,
    ARCHIVE_QUEUE,
    ARCHIVE_TASK,
    DISPATCH_TASK,
    PROBE_TASK,
    QUEUES,
    SWEEP_TASK,
)
from archiver.settings import Settings

log = logging.getLogger(__name__)

# What a broker that is down, restarting or unreachable raises, through kombu or redis-py
# directly (redis-py's ConnectionError is not an OSError).
BROKER_DOWN = (KombuError, OperationalError, OSError, redis.RedisError)


def unreachable(exc: BaseException) -> Unavailable:
    """The one error for a broker that cannot be reached, with its cause in one line."""
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unavailable(f"broker unreachable: {cause}")


class LiveWorker(TypedDict):
    """A worker that answered the broadcast."""

    name: str
    queues: list[str]
    concurrency: int | None
    active: int  # tasks running now


class _Declares(Protocol):
    """What a kombu channel offers that its type does not say (AMQP and Redis both have it)."""

    def queue_declare(self, *, queue: str, passive: bool) -> Any: ...


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for at-least-once, one-row-at-a-time transfers."""
    app = Celery("titan_archiver", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged only after it ran; a worker that dies hands it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # On SIGTERM (remapped to SIGQUIT, see the Procfile) running transfers get this long
        # to finish; what is still running then is handed back to the broker.
        worker_soft_shutdown_timeout=settings.shutdown_grace_seconds,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 30, 30),
        task_default_queue=ARCHIVE_QUEUE,
        # What a worker consumes unless started with -Q; ARCHIVER_WORKER_QUEUES narrows it.
        task_queues=[Queue(name, routing_key=name) for name in settings.worker_queues],
        task_routes={
            SWEEP_TASK: {"queue": ARCHIVE_QUEUE},
            DISPATCH_TASK: {"queue": ARCHIVE_QUEUE},
            PROBE_TASK: {"queue": ARCHIVE_QUEUE},
        },
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Must exceed the longest transfer, or Redis hands a running task to a second worker.
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        broker_pool_limit=20,
        timezone="UTC",
        # Our JSON, redacting handler stays on the root logger in worker processes too.
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def publish_archive(
    app: Celery, *, pk: int, queue: str = ARCHIVE_QUEUE, countdown: float | None = None
) -> None:
    """Queue the archiving of media row ``pk``; Unavailable if the broker cannot take it."""
    publish_task(app, task=ARCHIVE_TASK, args=[pk], queue=queue, countdown=countdown)


def publish_task(
    app: Celery,
    *,
    task: str,
    args: list[Any],
    queue: str = ARCHIVE_QUEUE,
    countdown: float | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Send one archive task through Celery; Unavailable if the broker cannot take it.
    ``headers``: more message headers (the receiver's W3C ``traceparent``)."""
    try:
        app.send_task(
            task,
            args=args,
            queue=queue,
            countdown=countdown,
            headers=headers,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )
    except BROKER_DOWN as exc:
        raise unreachable(exc) from exc


def workers(app: Celery, *, timeout: float = 1.5) -> list[LiveWorker]:
    """The workers that answer a broadcast within ``timeout``: name, queues, pool size, busy."""
    try:
        # The first broadcast waits its whole timeout (who will answer is unknown); the next
        # two return as soon as every worker that answered it has answered again.
        stats = app.control.inspect(timeout=timeout).stats() or {}
        if not stats:
            return []
        known = app.control.inspect(timeout=timeout, limit=len(stats))
        queues = known.active_queues() or {}
        active = known.active() or {}
    except BROKER_DOWN as exc:
        raise unreachable(exc) from exc
    found: list[LiveWorker] = []
    for name in sorted(stats):
        pool = stats[name].get("pool", {}) if isinstance(stats[name], dict) else {}
        found.append(
            {
                "name": name,
                "queues": sorted(q.get("name", "") for q in queues.get(name, [])),
                "concurrency": pool.get("max-concurrency"),
                "active": len(active.get(name, [])),
            }
        )
    return found


def queue_depths(app: Celery, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting in each archive queue (Redis or RabbitMQ); 0 for one not yet declared."""
    depths: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            for queue in queues:
                # A passive declare of a missing queue closes the AMQP channel: one per queue.
                try:
                    with conn.channel() as channel:
                        found = cast(_Declares, channel).queue_declare(queue=queue, passive=True)
                        depths[queue] = int(found.message_count)
                except ChannelError:
                    depths[queue] = 0
    except BROKER_DOWN as exc:
        raise unreachable(exc) from exc
    return depths


def queue_depth(app: Celery) -> int:
    """Messages waiting in all archive queues together."""
    return sum(queue_depths(app).values())


# -- which rows the broker holds (Redis) --------------------------------------------------

SCAN_LIMIT = 200_000  # messages; beyond this the sweeper falls back to comparing counts
_SCAN_CHUNK = 1000
# kombu's Redis transport: a queue's messages of priority p > 0 live under "<queue>\x06\x16<p>";
# delivered, unacknowledged messages in the hash "unacked" as JSON [message, exchange, key],
# keyed by delivery tag, and each tag's delivery time in the sorted set "unacked_index".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"


def rows_of_message(raw: bytes | str) -> list[int]:
    """The media rows an archive task message carries ([] for anything else or unreadable)."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        task = message["headers"]["task"]
        if task not in (ARCHIVE_TASK, ARCHIVE_BATCH_TASK):
            return []
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        pks = args[0] if task == ARCHIVE_BATCH_TASK else args[:1]
        return [pk for pk in pks if isinstance(pk, int)]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return []


def _queue_keys() -> list[str]:
    return [
        f"{queue}{_PRIORITY_SEP}{step}" if step else queue
        for queue in QUEUES
        for step in _PRIORITY_STEPS
    ]


def rows_in_broker(
    broker_url: str, *, limit: int = SCAN_LIMIT, abandoned_after: float | None = None
) -> set[int] | None:
    """Every media row an archive task in the broker carries: waiting in a queue, or
    delivered to a worker and not yet acknowledged (running, prefetched, or waiting for its
    countdown). Counted in rows, so a batch message of 16 rows counts 16.

    ``abandoned_after``: a message delivered longer ago than this many seconds does not
    count. A worker killed with ``kill -9`` leaves the messages it had taken and not yet
    started in the hash, where Redis hands them out again only after the visibility
    timeout (hours); the caller asks only about rows no worker has claimed, and a live
    worker starts what it took (or its countdown ends) well within a lease.

    None when the broker cannot be read this way (RabbitMQ: reading a queue would consume
    it) or holds more than ``limit`` messages (then the caller compares counts instead).
    The queues are read before the unacknowledged hash, so a message a worker takes
    meanwhile (queue -> hash) is seen in one or the other.
    """
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        keys = _queue_keys()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        lengths = [int(n) for n in pipe.execute()]
        if sum(lengths) + int(client.hlen(_UNACKED)) > limit:
            return None
        found: set[int] = set()
        for key, length in zip(keys, lengths, strict=True):
            # Indices count from the head, where publishes push; workers take from the
            # tail, so an index range never skips a message that is still there.
            for start in range(0, length, _SCAN_CHUNK):
                found.update(_rows(client.lrange(key, start, start + _SCAN_CHUNK - 1)))
        stale: set[bytes] = set()
        if abandoned_after is not None:
            before = time.time() - abandoned_after
            stale = set(cast("list[bytes]", client.zrangebyscore(_UNACKED_INDEX, "-inf", before)))
        abandoned = 0
        cursor = 0
        while True:
            cursor, entries = client.hscan(_UNACKED, cursor, count=_SCAN_CHUNK)
            for tag, raw in cast("dict[bytes, bytes]", entries).items():
                if tag in stale:
                    abandoned += 1
                else:
                    found.update(rows_of_message(raw))
            if cursor == 0:
                break
        if abandoned:
            log.debug(
                "%d archive messages were delivered over %.0f s ago and never acknowledged "
                "(their worker is gone): rows only they carry count as lost",
                abandoned,
                abandoned_after,
            )
        return found
    except redis.RedisError as exc:
        raise unreachable(exc) from exc
    finally:
        client.close()


def _rows(messages: Iterable[bytes | str]) -> Iterable[int]:
    for raw in messages:
        yield from rows_of_message(raw)
