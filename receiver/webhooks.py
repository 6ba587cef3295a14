"""``POST /webhooks/{tenant}``: read the capped raw body and hand it to the intake.

Three ways in, one behaviour (``respond``). Under the Procfile's server line, webhooks are
answered below ASGI, from uvicorn's request cycle (receiver/protocol.py). Under any other
ASGI server, ``serve`` answers straight from the ASGI scope (receiver/app.py sends it every
webhook while tracing is off), with no router, middleware layers or request and response
objects in front of the intake (a fifth of the receiver's profile before;
docs/performance.md). ``receive_webhook`` is the same as a Starlette route: it serves
webhooks while tracing is on (the HTTP middleware opens their server spans) and answers
what the fast paths leave to the router.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from archiver.infra.logs import request_id
from archiver.media.shapes import Error
from receiver import resources
from receiver.intake import NO_HEADERS
from receiver.metrics import request_id_for
from receiver.resources import Resources

log = logging.getLogger(__name__)

PREFIX = "/webhooks/"
_JSON = [(b"content-type", b"application/json")]


class Reply(NamedTuple):
    status: int
    body: bytes = b""  # JSON, or nothing
    headers: Mapping[str, str] = NO_HEADERS


async def read_capped(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The raw body from its ASGI messages, or None once it exceeds ``limit`` bytes (read
    no further). A loop, not an async generator: the event loop tracks every one made (a
    tenth of the body's cost on the hot path)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)


async def answer(
    res: Resources,
    tenant: str,
    receive: Receive,
    *,
    declared: str | None,
    signature: str | None,
) -> Reply:
    metrics = res.metrics
    limit = res.settings.max_body_bytes
    started = time.perf_counter()
    try:
        body = await read_capped(receive, declared, limit)
    except ClientDisconnect:
        metrics.outcome("client_disconnected").inc()
        log.info("webhook abandoned: client disconnected", extra={"outcome": "client_disconnected"})
        return Reply(400)
    if body is None:
        metrics.outcome("too_large").inc()
        log.info(
            "webhook refused: body over %d bytes",
            limit,
            extra={"outcome": "too_large"},
        )
        return Reply(413, Error(error="body too large").to_json(), {"Connection": "close"})
    accepted = await res.intake.accept(tenant, body, signature)
    metrics.outcome(accepted.outcome).inc()
    if accepted.not_captured is not None:
        metrics.not_captured.labels(accepted.tenant or "", accepted.not_captured).inc()
    metrics.accept_seconds.observe(time.perf_counter() - started)
    written = accepted.body
    return Reply(
        accepted.status,
        written if isinstance(written, bytes) else written.to_json(),
        accepted.headers,
    )


async def receive_webhook(request: Request) -> Response:
    """The route: ``answer`` behind Starlette's router and the HTTP middleware."""
    reply = await answer(
        resources.of(request),
        request.path_params["tenant"],
        request.receive,  # nothing in front of the route reads the body
        declared=request.headers.get("content-length"),
        signature=request.headers.get("x-webhook-signature"),
    )
    return Response(
        reply.body,
        reply.status,
        reply.headers,
        media_type="application/json" if reply.body else None,
    )


def tenant_of(scope: Mapping[str, Any]) -> str | None:
    """The tenant of a ``POST /webhooks/{tenant}`` the router would match, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    tenant = path[len(PREFIX) :]
    return tenant if tenant and "/" not in tenant else None


async def respond(
    res: Resources, tenant: str, headers: Iterable[tuple[bytes, bytes]], receive: Receive
) -> tuple[Reply, bytes]:
    """``answer`` from the request's headers and body, with what the HTTP middleware would
    add: the request id on every log line (returned for ``X-Request-ID``); an unexpected
    error is a logged 500 in the API's error shape, as the app's own handler answers it."""
    declared = signature = None
    given: bytes | None = None
    for name, value in headers:  # one pass for the three headers it reads
        if name == b"content-length" and declared is None:
            declared = value.decode("latin-1")
        elif name == b"x-webhook-signature" and signature is None:
            signature = value.decode("latin-1")
        elif name == b"x-request-id" and given is None:
            given = value
    rid = request_id_for(given)
    token = request_id.set(rid.decode())
    try:
        return await answer(res, tenant, receive, declared=declared, signature=signature), rid
    except Exception as exc:
        log.exception("unhandled error", exc_info=exc)
        return Reply(500, Error(error="internal error").to_json()), rid
    finally:
        request_id.reset(token)


def reply_headers(reply: Reply, rid: bytes) -> list[tuple[bytes, bytes]]:
    """The answer's headers, lower-case names as HTTP/1.1 writes them."""
    return [
        *(_JSON if reply.body else ()),
        (b"content-length", str(len(reply.body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()),
        (b"x-request-id", rid),
    ]


async def serve(res: Resources, tenant: str, scope: Scope, receive: Receive, send: Send) -> None:
    """``respond`` straight from the ASGI scope (receiver/app.py); the Procfile's server
    line answers webhooks below ASGI instead (receiver/protocol.py)."""
    reply, rid = await respond(res, tenant, scope["headers"], receive)
    headers = reply_headers(reply, rid)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
