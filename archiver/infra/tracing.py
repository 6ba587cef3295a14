"""OpenTelemetry tracing: one trace per media, from the webhook to the object in the bucket.

Off unless the standard variables turn it on: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP/protobuf), or
``OTEL_TRACES_EXPORTER=otlp|console``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off. The SDK reads the rest itself:
``OTEL_SERVICE_NAME`` (default ``titan-archiver-receiver`` / ``-worker``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its argument, ``OTEL_BSP_*``,
``OTEL_EXPORTER_OTLP_HEADERS``. When off, nothing here costs more than a flag check.

The trace of a media (deploy/README.md, "Tracing", lists the spans): the receiver's server span for
the webhook request; ``webhook record`` (the group commit's insert, shared with concurrent
requests, one span per request); ``archive publish`` (the broker message, which carries the
publish span's W3C ``traceparent`` in its headers; a batch message of several rows carries
each row's in ``traceparents``); in the worker ``archive media`` (its parent is the
message's ``traceparent``) with ``claim``, ``titan download`` / ``titan persist``,
``s3 upload`` and ``record archived|retrying|failed`` beneath it. A retry published later by
the dispatcher starts a new trace of the same media (``media.id`` attribute).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider once set up (flushed at shutdown)

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = (
    SpanKind.SERVER,
    SpanKind.CLIENT,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
    SpanKind.INTERNAL,
)


def wanted(env: Mapping[str, str] | None = None) -> str | None:
    """The exporter the OTEL_* variables ask for (``otlp`` or ``console``), or None: off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter in ("otlp", "console"):
        return exporter
    if exporter:
        log.warning(
            "OTEL_TRACES_EXPORTER=%s is not supported (otlp, console); tracing off", exporter
        )
        return None
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def setup(service: str) -> bool:
    """Turn tracing on for this process if the environment asks for it; True if on.

    Call once, early (before a pre-forking worker forks: the SDK's batch processor restarts
    its export thread in each child)."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    exporter_name = wanted()
    if exporter_name is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
    )

    attributes: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = service
    attributes["service.version"] = _version()
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter_name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("titan-archiver", _version())
    log.info("tracing on: %s exporter", exporter_name, extra={"service": service})
    return True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("titan-archiver")
    except PackageNotFoundError:
        return "unknown"


def enabled() -> bool:
    return _tracer is not None


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered (a worker child about to exit)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def shutdown() -> None:
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` naming ``span`` as the parent."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's ``traceparent``, or None when tracing is off or no span is open."""
    if _tracer is None:
        return None
    return traceparent(trace.get_current_span())


def parent_context(header: str | None) -> otel_context.Context | None:
    """The context a W3C ``traceparent`` names (None: start a new trace)."""
    if not header or not isinstance(header, str):
        return None
    return _PROPAGATOR.extract({"traceparent": header})


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, for log lines; None when there is none."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def start(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: str | Span | None = None,
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
) -> Span | None:
    """A started span (the caller ends it), child of ``parent`` (a span or a traceparent)
    or of the current span; None when tracing is off."""
    if _tracer is None:
        return None
    if isinstance(parent, str):
        ctx = parent_context(parent)
    elif parent is not None:
        ctx = trace.set_span_in_context(parent)
    else:
        ctx = None
    return _tracer.start_span(
        name, context=ctx, kind=kind, attributes=dict(attributes or {}), start_time=start_time
    )


def span(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span made current for the block (an exception marks it as an error); a no-op when
    tracing is off."""
    if _tracer is None:
        return nullcontext()
    return _current(start(name, kind=kind, parent=parent, attributes=attributes))


@contextmanager
def _current(opened: Span | None) -> Iterator[Span | None]:
    if opened is None:
        yield None
        return
    with trace.use_span(
        opened, end_on_exit=True, record_exception=True, set_status_on_exception=True
    ):
        yield opened


def use(opened: Span | None) -> AbstractContextManager[Any]:
    """Make an already started span current for the block without ending it."""
    if opened is None:
        return nullcontext()
    return trace.use_span(opened, end_on_exit=False)


def end(
    opened: Span | None,
    *,
    error: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    end_time: int | None = None,
) -> None:
    """End ``opened`` (if any) with ``attributes``; ``error`` marks it failed."""
    if opened is None:
        return
    for key, value in (attributes or {}).items():
        if value is not None:
            opened.set_attribute(key, value)
    if error is not None:
        opened.set_status(Status(StatusCode.ERROR, error[:200]))
    opened.end(end_time)
