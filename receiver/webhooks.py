"""``POST /webhooks/{tenant}``: read the capped raw body and hand it to the intake."""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from receiver import resources
from receiver.answers import ShapeResponse, error

log = logging.getLogger(__name__)


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it exceeds ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    res = resources.of(request)
    metrics = res.metrics
    limit = res.settings.max_body_bytes
    started = time.perf_counter()
    try:
        body = await read_capped(request, limit)
    except ClientDisconnect:
        metrics.webhooks.labels("client_disconnected").inc()
        log.info("webhook abandoned: client disconnected", extra={"outcome": "client_disconnected"})
        return Response(status_code=400)
    if body is None:
        metrics.webhooks.labels("too_large").inc()
        log.info(
            "webhook refused: body over %d bytes",
            limit,
            extra={"outcome": "too_large"},
        )
        return error(413, "body too large", {"Connection": "close"})
    answer = await res.intake.accept(
        request.path_params["tenant"], body, request.headers.get("x-webhook-signature")
    )
    metrics.webhooks.labels(answer.outcome).inc()
    if answer.not_captured is not None:
        metrics.not_captured.labels(answer.tenant or "", answer.not_captured).inc()
    metrics.accept_seconds.observe(time.perf_counter() - started)
    return ShapeResponse(answer.body, status_code=answer.status, headers=answer.headers)
