"""The receiver's hand-built task message is pinned to Celery's contract: the same task sent
through Celery's own message builder (``send_task`` over kombu's Redis transport) and through
``receiver.publisher`` land in Redis with the same fields, headers and body."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from archiver.errors import Unavailable
from archiver.infra.broker import make_celery, rows_in_broker, rows_of_message
from archiver.queue import ARCHIVE_BATCH_TASK, ARCHIVE_QUEUE, ARCHIVE_TASK, LARGE_QUEUE
from devstack.fixtures import settings_for
from devstack.processes import free_port
from devstack.rig import RedisDatabases
from receiver.publisher import Publisher, random_ids, task_message

# Values that differ by nature between two messages: fresh ids, and who sent it.
PER_MESSAGE_HEADERS = {"id", "root_id", "origin"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}


@pytest.fixture
def broker(redis_dbs: RedisDatabases) -> Iterator[str]:
    """A Redis database of its own, emptied before and after."""
    url = redis_dbs.take()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def _pop(url: str, queue: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        raw = client.rpop(queue)
        assert isinstance(raw, bytes), f"nothing in {queue}"
        assert client.llen(queue) == 0
    finally:
        client.close()
    message: dict[str, Any] = json.loads(raw)
    return message


def _celerys(url: str, task: str, args: list[Any], queue: str) -> dict[str, Any]:
    app = make_celery(settings_for("sqlite://", url))
    try:
        app.send_task(task, args=args, queue=queue)
    finally:
        app.close()
    return _pop(url, queue)


def _body(message: dict[str, Any]) -> Any:
    assert message["properties"]["body_encoding"] == "base64"
    return json.loads(base64.b64decode(message["body"]))


def _assert_same_contract(ours: dict[str, Any], celerys: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(celerys)
    for field in ("content-type", "content-encoding"):
        assert ours[field] == celerys[field], field
    assert _body(ours) == _body(celerys)
    assert sorted(ours["headers"]) == sorted(celerys["headers"])
    for name, value in celerys["headers"].items():
        if name not in PER_MESSAGE_HEADERS:
            assert ours["headers"][name] == value, name
    # The per-message values still have Celery's form: a task id, and its root is itself.
    uuid.UUID(ours["headers"]["id"])
    assert ours["headers"]["root_id"] == ours["headers"]["id"]
    assert sorted(ours["properties"]) == sorted(celerys["properties"])
    for name, value in celerys["properties"].items():
        if name not in PER_MESSAGE_PROPERTIES:
            assert ours["properties"][name] == value, name
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]


@pytest.mark.parametrize(
    ("task", "args", "queue"),
    [
        (ARCHIVE_TASK, [42], ARCHIVE_QUEUE),
        (ARCHIVE_TASK, [7], LARGE_QUEUE),
        (ARCHIVE_BATCH_TASK, [[1, 2, 3]], ARCHIVE_QUEUE),
    ],
)
def test_hand_built_message_matches_celerys_own(
    broker: str, task: str, args: list[Any], queue: str
) -> None:
    celerys = _celerys(broker, task, args, queue)
    ours = json.loads(task_message(args, task=task, queue=queue, origin="receiver@test:1"))
    _assert_same_contract(ours, celerys)


def test_random_ids_are_version_4_uuids_written_as_uuid_writes_them() -> None:
    made = [one for pair in random_ids(500) for one in pair]
    assert len(set(made)) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every bit outside the version and the variant is random: each seen both ways.
    seen_set = seen_clear = 0
    for text in made:
        value = uuid.UUID(text).int
        seen_set |= value
        seen_clear |= value ^ ((1 << 128) - 1)
    fixed = (0xF << 76) | (0x3 << 62)
    assert seen_set | fixed == seen_clear | fixed == (1 << 128) - 1


def test_published_batch_lands_as_celerys_messages_on_each_queue(broker: str) -> None:
    app = make_celery(settings_for("sqlite://", broker))
    publisher = Publisher(app, broker)
    try:
        publisher.publish([(10, LARGE_QUEUE)])
    finally:
        publisher.close()
        app.close()
    ours = _pop(broker, LARGE_QUEUE)
    _assert_same_contract(ours, _celerys(broker, ARCHIVE_TASK, [10], LARGE_QUEUE))


def test_the_sweeper_reads_which_rows_the_broker_holds_waiting_or_delivered(broker: str) -> None:
    publisher = Publisher(make_celery(settings_for("sqlite://", broker)), broker)
    try:
        # Enough small rows to travel as batch messages, plus one large row alone.
        publisher.publish([(pk, ARCHIVE_QUEUE) for pk in range(1, 41)] + [(99, LARGE_QUEUE)])
    finally:
        publisher.close()
    app = make_celery(settings_for("sqlite://", broker))
    try:
        app.send_task(ARCHIVE_TASK, args=[100], queue=ARCHIVE_QUEUE)  # Celery's own message
        client = redis.Redis.from_url(broker)
        messages = client.llen(ARCHIVE_QUEUE) + client.llen(LARGE_QUEUE)
        assert messages < 42  # batches: fewer messages than rows
        expected = set(range(1, 41)) | {99, 100}
        assert rows_in_broker(broker) == expected
        # A message a worker took and has not acknowledged still counts.
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue(LARGE_QUEUE, no_ack=False)
            delivered = queue.get(timeout=5)
            assert client.llen(LARGE_QUEUE) == 0 and client.hlen("unacked") == 1
            assert rows_in_broker(broker) == expected
            # Unless it was delivered so long ago that its worker must be gone (kill -9).
            assert rows_in_broker(broker, abandoned_after=60) == expected
            (tag,) = cast("list[bytes]", client.zrange("unacked_index", 0, -1))
            client.zadd("unacked_index", {tag: time.time() - 61})
            assert rows_in_broker(broker, abandoned_after=60) == expected - {99}
            assert rows_in_broker(broker) == expected
            delivered.ack()
            assert rows_in_broker(broker) == expected - {99}
            queue.close()
        client.close()
    finally:
        app.close()
    assert rows_in_broker(broker, limit=2) is None  # too many to read: compare counts instead
    assert rows_in_broker("amqp://guest@127.0.0.1//") is None  # RabbitMQ cannot be read
    assert rows_of_message(b"not json") == [] and rows_of_message(b'{"headers": {}}') == []


@pytest.mark.parametrize("way", ["publish", "apublish"])
def test_a_batch_is_consumed_in_its_order_with_fresh_ids_per_message(broker: str, way: str) -> None:
    """One LPUSH per queue carries the batch: a worker pops its messages in the order they
    were given, each with its own task id and delivery tag."""
    small = [(pk, ARCHIVE_QUEUE) for pk in range(1, 4)]  # three rows: a message each
    large = [(pk, LARGE_QUEUE) for pk in (7, 8)]
    publisher = Publisher(make_celery(settings_for("sqlite://", broker)), broker)

    async def apublish() -> None:
        try:
            await publisher.apublish(small + large)
        finally:
            await publisher.aclose()

    if way == "apublish":
        asyncio.run(apublish())
    else:
        try:
            publisher.publish(small + large)
        finally:
            publisher.close()
    client = redis.Redis.from_url(broker)
    try:  # kombu's Redis transport takes from the tail (BRPOP)
        popped = {q: cast("list[bytes]", client.rpop(q, 10)) for q in (ARCHIVE_QUEUE, LARGE_QUEUE)}
    finally:
        client.close()
    assert [rows_of_message(m) for m in popped[ARCHIVE_QUEUE]] == [[1], [2], [3]]
    assert [rows_of_message(m) for m in popped[LARGE_QUEUE]] == [[7], [8]]
    everything = [json.loads(m) for m in popped[ARCHIVE_QUEUE] + popped[LARGE_QUEUE]]
    ids = {m["headers"]["id"] for m in everything} | {
        m["properties"]["delivery_tag"] for m in everything
    }
    assert len(ids) == 10 and all(uuid.UUID(i).version == 4 for i in ids)


def test_a_connection_the_broker_closed_meanwhile_is_replaced_not_a_refusal(broker: str) -> None:
    """The receiver keeps its broker connections between batches: one the server closed
    in between (a restart, an idle timeout) costs a reconnect, not a 503."""
    publisher = Publisher(make_celery(settings_for("sqlite://", broker)), broker)
    admin = redis.Redis.from_url(broker)

    async def scenario() -> None:
        try:
            await publisher.apublish([(1, ARCHIVE_QUEUE)])
            # Close every connection but the admin's own, as a server restart would.
            killed = admin.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
            await publisher.apublish([(2, ARCHIVE_QUEUE)])
        finally:
            await publisher.aclose()

    try:
        asyncio.run(scenario())
        popped = cast("list[bytes]", admin.rpop(ARCHIVE_QUEUE, 10))
    finally:
        admin.close()
    assert [rows_of_message(m) for m in popped] == [[1], [2]]


def test_an_unreachable_broker_is_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    publisher = Publisher(make_celery(settings_for("sqlite://", url)), url)

    async def scenario() -> None:
        try:
            await publisher.apublish([(1, ARCHIVE_QUEUE)])
        finally:
            await publisher.aclose()

    with pytest.raises(Unavailable, match="broker unavailable"):
        asyncio.run(scenario())
