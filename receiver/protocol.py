"""The web line's HTTP/1.1 protocol: uvicorn's, with webhooks answered below ASGI.

The Procfile's ``web`` line names it: ``uvicorn ... --http receiver.protocol:WebhookProtocol``.
uvicorn's httptools protocol still parses every request and keeps each connection's state
(keep-alive and its timeout, pipelining, flow control, ``Expect: 100-continue``,
disconnects, graceful shutdown). A ``POST /webhooks/{tenant}`` that the app answers on its
fast path (receiver/app.py ``Receiver``) is answered here, from uvicorn's request cycle, by
the same code (receiver/webhooks.py ``respond``): no ASGI messages or middleware frames on
its way, and the status line, headers and body leave in one write instead of two. The two
writes were a seventh of the receiver's CPU per webhook; docs/performance.md has the
figures. Every other request, and every webhook while tracing or uvicorn's access log is
on, goes to the app as ASGI, as under uvicorn's own protocol.
"""

from __future__ import annotations

import contextvars
import logging
from typing import cast

from starlette.types import Receive
from uvicorn._types import ASGI3Application
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from archiver.infra import tracing
from receiver import webhooks
from receiver.app import Receiver
from receiver.resources import Resources

log = logging.getLogger(__name__)


def _resources(app: ASGI3Application) -> Resources | None:
    """The receiver's resources when ``app`` is our app with its lifespan done, else None.
    uvicorn's proxy-headers middleware (``--proxy-headers``) is looked through: it sets the
    client's address, which no webhook answer uses."""
    while isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    if not isinstance(app, Receiver):
        return None
    served = getattr(app.state, "resources", None)
    return served if isinstance(served, Resources) else None


class WebhookProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn starts every request here once its headers are parsed (a pipelined one
        # when the one before it is answered); the body may still be on its way. A uvicorn
        # that no longer calls it serves webhooks the ASGI way (tests/test_webhook_paths.py
        # counts the ones answered here).
        # uvicorn's access lines (on unless --no-access-log) are written by its own cycle.
        res = None if app is service_unavailable or self.config.access_log else _resources(app)
        tenant = None if res is None else webhooks.tenant_of(cycle.scope)
        if res is None or tenant is None or tracing.enabled():
            super()._start_asgi_task(cycle, app)
            return
        answering = _answer(res, tenant, cycle)
        if getattr(self.config, "reset_contextvars", False):  # not in older uvicorn releases
            task = self.loop.create_task(answering, context=contextvars.Context())
        else:
            task = self.loop.create_task(answering)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)


def head(status: int, headers: list[tuple[bytes, bytes]], *, keep_alive: bool) -> bytes:
    """An HTTP/1.1 answer's status line and headers, as uvicorn writes them."""
    lines = [STATUS_LINE[status]]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def _answer(res: Resources, tenant: str, cycle: RequestResponseCycle) -> None:
    """One webhook, answered in one write, the cycle left as uvicorn's own leaves it."""
    try:
        # The cycle's receive: the body as uvicorn hands it to an app (it sends
        # "100 Continue" first when asked, and says so when the client went away).
        reply, rid = await webhooks.respond(
            res, tenant, cycle.scope["headers"], cast(Receive, cycle.receive)
        )
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if "Connection" in reply.headers:  # only ever "close" (a body over the limit)
            cycle.keep_alive = False
        answer = head(
            reply.status,
            [*cycle.default_headers, *webhooks.reply_headers(reply, rid)],
            keep_alive=cycle.keep_alive or "Connection" in reply.headers,
        )
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(answer + reply.body)
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()
    except Exception:
        log.exception("webhook answer not written; connection closed")
        cycle.transport.close()
    finally:
        cycle.on_response = lambda: None  # as uvicorn's cycle leaves it: no cycle kept
