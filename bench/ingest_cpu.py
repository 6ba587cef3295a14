"""Receiver CPU per webhook with no sockets: the ASGI app driven in-process.

    .venv/bin/python -m bench.ingest_cpu [--requests 20000] [--concurrency 32]

``bench.ingest`` measures what a deployment sees (uvicorn, wrk, real sockets), but on a
shared 2-core machine its figures swing by a fifth from run to run. This drives the same
app (``create_app``, its lifespan, PostgreSQL and Redis) by calling it as ASGI from
``--concurrency`` coroutines, each sending signed ~1.5 KB media events one after another,
and reads the process's CPU time per webhook: the cost of our code alone, steady enough to
compare builds. Side by side in one run:

- ``bare starlette``: bench/bare_app.py (reads the body, answers 202);
- ``without the write``: the receiver with its group commit answered at once (no database
  row, no broker message): verification, parsing, logging and the answer;
- ``titan-archiver``: the receiver as it runs, every 202 a committed row and a message.

Then the same requests as HTTP/1.1 bytes through an HTTP protocol, in-process too: each of
``--concurrency`` connections is a uvicorn protocol instance fed its requests one after
another, with a transport that collects the answer instead of a socket (no kernel, no
load generator: the protocol's parsing, request cycle and answer writes, and the app's
work). ``--protocols`` adds, for bare Starlette and the receiver, one line under uvicorn's
own httptools protocol and one under the Procfile's (receiver/protocol.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from archiver.infra.db import make_engine
from archiver.media.recording import Arrival, Recorded
from archiver.settings import load_settings
from archiver.tables import Status
from bench import bare_app
from bench.ingest import add_tenant
from bench.loadgen import body_parts, media_id
from devstack import services
from devstack.fixtures import migrated_database
from receiver.app import create_app
from receiver.protocol import WebhookProtocol
from receiver.resources import Resources
from titan_simulator.sender import signature

HMAC_KEY = "bench-hmac-key"
Request = tuple[bytes, str]


Statuses = dict[int, int]
PROTOCOLS = [("uvicorn", HttpToolsProtocol), ("web", WebhookProtocol)]
Drive = Callable[[Starlette, list[Request], int], Awaitable[Statuses]]


async def drive(app: Starlette, requests: list[Request], concurrency: int) -> Statuses:
    """Send every request through ``app`` from ``concurrency`` coroutines; count statuses."""
    statuses: Statuses = {}
    pending = iter(requests)

    async def one(body: bytes, sig: str) -> None:
        sent: list[Message] = []
        given = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            return given.pop() if given else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/acme",
            "raw_path": b"/webhooks/acme",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-webhook-signature", sig.encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)
        status = int(sent[0]["status"])
        statuses[status] = statuses.get(status, 0) + 1

    async def sender() -> None:
        for body, sig in pending:
            await one(body, sig)

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return statuses


class Connection(asyncio.Transport):
    """A client's connection as a uvicorn protocol sees it, with no socket: what the
    protocol writes is gathered until a whole answer has come, then ``answered`` gets its
    status."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._closing = False
        self.answered: asyncio.Future[int] | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        peers = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}
        return peers.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"content-length: ")
        length = int(head[at + 16 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        status = int(self._buffer[9:12])
        del self._buffer[: end + 4 + length]
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(status)


def over_http(protocol: type[HttpToolsProtocol]) -> Drive:
    """``drive`` with every request as HTTP/1.1 bytes through ``protocol``, configured as
    the Procfile's web line configures it (proxy headers on, uvicorn's access log off), one
    protocol instance per connection and its requests one after another on it."""

    async def drive_http(app: Starlette, requests: list[Request], concurrency: int) -> Statuses:
        config = uvicorn.Config(
            app, http=protocol, access_log=False, log_config=None, lifespan="off"
        )
        config.load()
        state = ServerState()
        state.default_headers = [(b"date", b"Mon, 07 Dec 2026 12:00:00 GMT")]
        loop = asyncio.get_running_loop()
        statuses: Statuses = {}
        pending = iter(requests)

        async def connection() -> None:
            peer = Connection()
            served = protocol(config=config, server_state=state, app_state={}, _loop=loop)
            served.connection_made(peer)
            for body, sig in pending:
                peer.answered = loop.create_future()
                served.data_received(
                    b"POST /webhooks/acme HTTP/1.1\r\nhost: bench\r\n"
                    b"content-type: application/json\r\ncontent-length: %d\r\n"
                    b"x-webhook-signature: %s\r\n\r\n%s" % (len(body), sig.encode(), body)
                )
                status = await peer.answered
                statuses[status] = statuses.get(status, 0) + 1
            served.connection_lost(None)

        await asyncio.gather(*(connection() for _ in range(concurrency)))
        return statuses

    return drive_http


def answered_at_once(resources: Resources) -> None:
    """Replace the group commit's durable write with an immediate answer."""
    pks = itertools.count(1)

    async def submit(_: Arrival) -> Recorded:
        return Recorded(pk=next(pks), created=True, status=Status.QUEUED, needs_publish=False)

    resources.intake._commit.submit = submit  # type: ignore[assignment]


def measure(
    app: Starlette,
    requests: list[Request],
    concurrency: int,
    prepare: Callable[[Starlette], None] = lambda _: None,
    through: Drive = drive,
) -> tuple[float, Statuses]:
    """CPU microseconds per request over ``requests`` (after a warm-up of 500), sent
    ``through`` the app as ASGI, or as HTTP through a protocol (``over_http``)."""

    async def run() -> tuple[float, Statuses]:
        async with app.router.lifespan_context(app):
            prepare(app)
            await through(app, requests[:500], concurrency)
            started = time.process_time()
            statuses = await through(app, requests[500:], concurrency)
            spent = time.process_time() - started
        return spent / (len(requests) - 500) * 1e6, statuses

    return asyncio.run(run())


@contextlib.contextmanager
def logs_down_a_pipe() -> Iterator[None]:
    """stderr (where the receiver writes its lines) into a pipe that another process
    drains, as a container runtime reads it in production; the real stderr again after,
    with whatever went wrong meanwhile."""
    drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert drain.stdin is not None
    sys.stderr = io.TextIOWrapper(drain.stdin, line_buffering=True)
    try:
        yield
    finally:
        logging.getLogger().handlers.clear()  # they hold the pipe
        sys.stderr.close()
        sys.stderr = sys.__stderr__
        drain.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--caption-lines",
        type=int,
        default=0,
        metavar="CHARS",
        help="a caption of lines this long (0: one printable line, as in bench.ingest)",
    )
    parser.add_argument(
        "--protocols",
        action="store_true",
        help="also through uvicorn's httptools protocol and the Procfile's, as HTTP bytes",
    )
    args = parser.parse_args()
    master = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp())
    with (
        services.postgres_server() as admin_url,
        services.redis_server() as redis_url,
        migrated_database("postgres", tmp, admin_url) as db_url,
    ):
        engine = make_engine(db_url)
        add_tenant(engine, master=master, hmac_key=HMAC_KEY)
        engine.dispose()
        settings = load_settings(
            database_url=db_url, broker_url=redis_url, secret_key=master, log_level="INFO"
        )
        prefix, suffix = body_parts(line_length=args.caption_lines)
        runs = iter(f"{c}{d}" for c in "BCD" for d in "0123456789")

        def requests() -> list[Request]:
            run = next(runs)
            bodies = [f"{prefix}{media_id(run, i)}{suffix}".encode() for i in range(args.requests)]
            return [(b, signature(b, HMAC_KEY)) for b in bodies]

        def without_write(app: Starlette) -> None:
            answered_at_once(app.state.resources)

        with logs_down_a_pipe():
            results = {
                "bare starlette": measure(bare_app.create_app(), requests(), args.concurrency),
                "without the write": measure(
                    create_app(settings), requests(), args.concurrency, without_write
                ),
                "titan-archiver": measure(create_app(settings), requests(), args.concurrency),
            }
            if args.protocols:
                for name, protocol in PROTOCOLS:
                    results[f"bare, {name} protocol"] = measure(
                        bare_app.create_app(),
                        requests(),
                        args.concurrency,
                        through=over_http(protocol),
                    )
                    results[f"receiver, {name} protocol"] = measure(
                        create_app(settings),
                        requests(),
                        args.concurrency,
                        through=over_http(protocol),
                    )
    python = sys.version.split()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
    print(
        f"in-process ASGI, {args.requests} requests from {args.concurrency} coroutines, "
        f"PostgreSQL, receiver log level INFO (its lines down a pipe)"
        + (f", captions in lines of {args.caption_lines}" if args.caption_lines else "")
    )
    print(f"{'app':<28}{'CPU us/req':>12}  statuses")
    for name, (cpu, statuses) in results.items():
        print(f"{name:<28}{cpu:>12.0f}  {statuses}")


if __name__ == "__main__":
    main()
