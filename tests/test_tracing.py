"""Tracing (archiver/infra/tracing.py): one trace per media across real processes, exported over
OTLP/HTTP to an endpoint the test runs; off unless the OTEL_* variables turn it on."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from archiver.infra import tracing
from archiver.infra.broker import make_celery, publish_task
from archiver.infra.db import make_engine, session_scope
from archiver.queue import ARCHIVE_QUEUE, ARCHIVE_TASK
from archiver.tables import Tenant
from devstack import processes
from devstack.fixtures import (
    add_tenant,
    process_env,
    record_item,
    running_archiver,
    settings_for,
)
from devstack.otlp import OtlpCollector, ReceivedSpan
from devstack.rig import RedisDatabases
from receiver.envelope import media_item
from receiver.publisher import Publisher, task_message
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia, post_signed

PARENT_TRACE, PARENT_SPAN = "ab" * 16, "cd" * 8  # a caller's trace, for Celery's publish path
# Beneath each media's "archive media" span in the worker.
WORKER_STEPS = {"claim", "titan download", "s3 upload", "record archived"}


def test_tracing_is_off_unless_the_otel_variables_ask() -> None:
    assert tracing.wanted({}) is None
    assert tracing.wanted({"OTEL_SERVICE_NAME": "x"}) is None
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "otlp"
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}) == "otlp"
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert (
        tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"})
        is None
    )
    assert (
        tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"})
        is None
    )
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "zipkin"}) is None  # not shipped: off, warned
    # Off in this process: no span, no traceparent, no ids on log lines.
    assert not tracing.enabled() and tracing.current_traceparent() is None
    assert tracing.log_ids() is None
    with tracing.span("nothing") as opened:
        assert opened is None


def test_the_hand_built_message_carries_extra_headers_where_celery_puts_them() -> None:
    headers = json.loads(
        task_message([7], headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    )["headers"]
    assert headers["traceparent"].startswith("00-111") and headers["task"] == ARCHIVE_TASK


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [(s.name, s.span_id) for s in spans])
    return found[0]


def _record(database_url: str, tenant_name: str, media: list[SentMedia]) -> list[int]:
    """Rows for ``media`` as the receiver records them, published by nobody yet."""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            tenant = session.exec(select(Tenant).where(Tenant.name == tenant_name)).one()
        pks = []
        for sent in media:
            item = media_item(sent.envelope)
            assert item is not None
            pks.append(record_item(engine, tenant=tenant, item=item).pk)
        return pks
    finally:
        engine.dispose()


def test_one_trace_per_media_from_the_webhook_to_the_bucket(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = OtlpCollector()
    try:
        with migrated_database("sqlite", tmp_path, None) as database_url:
            broker = redis_dbs.take()
            env = process_env(
                database_url,
                broker,
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
                OTEL_BSP_SCHEDULE_DELAY="100",
                ARCHIVER_LOG_FORMAT="json",
            )
            with running_archiver("traced", env, tmp_path) as (web, sim):
                tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="traced")
                items = [
                    sim.make_media(account=tenant.name, message_type=kind, size=size)
                    for kind, size in [("video", 9_000_000)] + [("image", 20_000)] * 6
                ]
                url = f"{web.receiver_url}/webhooks/{tenant.name}"
                with httpx.Client(timeout=30) as client, ThreadPoolExecutor(7) as pool:
                    codes = list(
                        pool.map(
                            lambda i: (
                                post_signed(client, url, tenant.hmac_key, i.envelope).status_code
                            ),
                            items,
                        )
                    )
                assert codes == [202] * len(items)

                # Rows published by other paths, with a traceparent of ours: one through
                # Celery's own publish (as on RabbitMQ), 16 by the hand-built publisher, which
                # puts them two to a message (each row's traceparent in "traceparents"); the
                # worker continues each row's trace.
                extras = [
                    sim.make_media(account=tenant.name, message_type="image", size=5_000)
                    for _ in range(17)
                ]
                pks = _record(database_url, tenant.name, extras)
                celery = make_celery(settings_for(database_url, broker_url=broker))
                publish_task(
                    celery,
                    task=ARCHIVE_TASK,
                    args=[pks[0]],
                    headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"},
                )
                monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
                monkeypatch.setenv("OTEL_SERVICE_NAME", "test-publisher")
                assert tracing.setup("unused")
                publisher = Publisher(celery, broker)
                try:
                    publisher.publish(
                        [(pk, ARCHIVE_QUEUE) for pk in pks[1:]],
                        {pk: f"00-{n:032x}-{n:016x}-01" for n, pk in enumerate(pks[1:], 1)},
                    )
                finally:
                    publisher.close()
                    tracing.shutdown()  # exports the two publish spans

                def exported() -> bool:
                    spans = collector.snapshot()
                    done = [s for s in spans if s.name == "record archived"]
                    return len(done) == len(items) + len(extras)

                processes.wait_until(exported, timeout=90, interval=0.3, what="every trace")
                receiver_log = web.procs[-1].log()
    finally:
        collector.close()

    spans = collector.snapshot()
    by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    media_traces = {
        s.attributes["media.id"]: s.trace_id for s in spans if s.name == "archive media"
    }
    assert set(media_traces) == {i.media_id for i in items + extras}
    assert len(set(media_traces.values())) == len(media_traces)  # one trace per media

    for item in items:
        trace = by_trace[media_traces[item.media_id]]
        server = _one(trace, "POST /webhooks/{tenant}")
        assert server.kind == "server" and server.parent_id == ""
        assert server.service == "titan-archiver-receiver"
        assert server.attributes["http.response.status_code"] == 202
        record_span = _one(trace, "webhook record")
        assert record_span.parent_id == server.span_id
        assert record_span.attributes["media.id"] == item.media_id
        publish = _one(trace, "archive publish")
        assert publish.parent_id == record_span.span_id and publish.kind == "producer"
        consume = _one(trace, "archive media")
        assert consume.parent_id == publish.span_id and consume.kind == "consumer"
        assert consume.service == "titan-archiver-worker"
        assert consume.attributes["archiver.outcome"] == "archived"
        steps = _children(trace, consume)
        assert {s.name for s in steps} == WORKER_STEPS, item.message_type
        assert not any(s.error for s in trace)
        download, upload = _one(steps, "titan download"), _one(steps, "s3 upload")
        assert download.kind == upload.kind == "client"
        assert upload.attributes["archiver.bytes"] == item.size
        # In time order: claimed, transferred, then recorded.
        claim, done = _one(steps, "claim"), _one(steps, "record archived")
        assert claim.end_ns <= download.start_ns <= upload.start_ns
        assert upload.end_ns <= done.start_ns
        assert server.start_ns <= record_span.start_ns <= publish.start_ns <= consume.start_ns

    continued = by_trace[PARENT_TRACE]
    consume = _one(continued, "archive media")
    assert consume.parent_id == PARENT_SPAN and consume.attributes["media.id"] == extras[0].media_id
    assert {s.name for s in _children(continued, consume)} == WORKER_STEPS
    for n, extra in enumerate(extras[1:], 1):
        continued = by_trace[f"{n:032x}"]
        publish = _one(continued, "archive publish")
        assert publish.parent_id == f"{n:016x}" and publish.service == "test-publisher"
        assert publish.attributes["messaging.batch.message_count"] == 2
        consume = _one(continued, "archive media")
        assert consume.parent_id == publish.span_id
        assert consume.attributes["media.id"] == extra.media_id
        assert {s.name for s in _children(continued, consume)} == WORKER_STEPS

    # The receiver's log line of each webhook names its trace.
    events = [json.loads(line) for line in receiver_log.splitlines() if line.startswith("{")]
    queued = {e["mediaId"]: e for e in events if e.get("outcome") == "queued"}
    for item in items:
        assert queued[item.media_id]["trace_id"] == media_traces[item.media_id]
        assert (
            queued[item.media_id]["span_id"]
            == _one(by_trace[media_traces[item.media_id]], "POST /webhooks/{tenant}").span_id
        )


@pytest.fixture(autouse=True)
def _no_tracing_leak() -> Iterator[None]:
    """Tracing is off in the test process unless a test turns it on, and off after it."""
    assert not tracing.enabled()
    yield
    tracing.shutdown()
