"""A Titan media API stand-in that follows shared/titan-api.md, with fault knobs for tests.

Media routes (Bearer auth):  GET  /api/sessions/{s}/media/{id}
                             POST /api/sessions/{s}/media/{id}/download
                             POST /api/sessions/{s}/media/{id}/persist
Webhooks API (Bearer auth):  GET, POST /api/webhooks; GET, PATCH, PUT, DELETE /api/webhooks/{id}
Control routes (no auth):    POST /_sim/accounts, /_sim/media, /_sim/faults, /_sim/reset,
                             /_sim/deliver (an event to the account's registered webhooks)
                             GET  /_sim/stats, /_sim/media/{account}/{id}
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import IO, Any, cast
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from titan_simulator import content, webhooks
from titan_simulator.state import Faults, MediaRecord, S3Target, World

DOCS = "https://docs.usetitan.app/api"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "docs": DOCS}, status_code=status, headers=headers)


def _other_origin(request: Request) -> str:
    """The same server under its other loopback name, so a redirect crosses origins."""
    url = request.url
    host = "localhost" if url.hostname in ("127.0.0.1", "::1") else "127.0.0.1"
    return f"{url.scheme}://{host}:{url.port}"


def create_app(world: World | None = None) -> Starlette:
    world = world or World()
    blobs: dict[str, tuple[str, str]] = {}  # token -> (account, media id)
    streaming: dict[str, int] = {}  # account -> downloads being served right now

    def count(key: str) -> None:
        with world.lock:
            world.stats[key] += 1

    def common_headers() -> dict[str, str]:
        with world.lock:
            remaining = "0" if world.faults.take("exhausted") else "999"
        if remaining == "0":
            count("answered_exhausted")
        headers = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": remaining}
        if world.faults.deprecation:
            headers |= {"Deprecation": "true", "Sunset": "Wed, 31 Dec 2031 23:59:59 GMT"}
        return headers

    def authorise(request: Request) -> tuple[str | None, Response | None]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        account = world.accounts.get(token) if scheme == "Bearer" else None
        if account is None:
            count("unauthorised")
            return None, _error(401, "Invalid API key")
        with world.lock:
            if world.faults.take("rate_limit"):
                count("answered_429")
                return None, _error(
                    429,
                    "Rate limit exceeded",
                    {"Retry-After": str(world.faults.retry_after)} | common_headers(),
                )
            if world.faults.take("bad_gateway"):
                count("answered_502")
                return None, _error(502, "Media worker unreachable")
            if world.faults.take("unavailable"):
                count("answered_503")
                return None, _error(503, "Service overloaded")
        return account, None

    def media_request(request: Request) -> tuple[str, MediaRecord] | Response:
        """The caller's account and the media it names, or the answer that refuses it."""
        account, refusal = authorise(request)
        if refusal is not None or account is None:
            return refusal or _error(401, "Invalid API key")
        record = world.media.get((account, request.path_params["media_id"]))
        if record is None or record.session != request.path_params["session"] or record.gone:
            count("answered_404")
            return _error(404, "Media not found or expired")
        return account, record

    async def get_media(request: Request) -> Response:
        found = media_request(request)
        if isinstance(found, Response):
            return found
        _account, record = found
        count("get")
        return JSONResponse({"data": record.info()}, headers=common_headers())

    def stream(record: MediaRecord, *, account: str, truncate: bool, short: bool) -> Response:
        size = record.size
        sent_size = size // 2 if (truncate or short) else size
        declared = sent_size if short else size

        async def body() -> AsyncIterator[bytes]:
            # How many downloads of one account Titan serves at once, at most (stats key
            # max_downloads_at_once:<account>): what a per-tenant cap must bound.
            key = f"max_downloads_at_once:{account}"
            with world.lock:
                streaming[account] = streaming.get(account, 0) + 1
                world.stats[key] = max(world.stats[key], streaming[account])
            try:
                async for piece in iterate_in_threadpool(
                    content.media_chunks(record.media_id, sent_size, record.sample)
                ):
                    if world.faults.slow_ms:
                        await asyncio.sleep(world.faults.slow_ms / 1000)
                    yield piece
            finally:
                with world.lock:
                    streaming[account] -= 1

        headers = common_headers() | {"Content-Length": str(declared)}
        return StreamingResponse(body(), media_type=record.mime_type, headers=headers)

    async def download(request: Request) -> Response:
        found = media_request(request)
        if isinstance(found, Response):
            return found
        account, record = found
        count("download")
        if world.faults.redirect:
            token = secrets.token_urlsafe(16)
            blobs[token] = (account, record.media_id)
            return RedirectResponse(f"{_other_origin(request)}/_sim/blob/{token}", status_code=302)
        with world.lock:
            truncate = world.faults.take("truncate")
            short = not truncate and world.faults.take("wrong_length")
        if truncate:
            count("truncated")
        if short:
            count("wrong_length")
        return stream(record, account=account, truncate=truncate, short=short)

    async def blob(request: Request) -> Response:
        if "authorization" in request.headers:
            count("api_key_leaked_to_blob_host")
        found = blobs.pop(request.path_params["token"], None)
        if found is None:
            return _error(404, "Blob link expired")
        count("blob")
        return stream(world.media[found], account=found[0], truncate=False, short=False)

    async def persist(request: Request) -> Response:
        found = media_request(request)
        if isinstance(found, Response):
            return found
        account, record = found
        target = world.s3.get(account)
        if target is None:
            return _error(409, "No S3 storage configured for this account")
        key = f"titan/{record.session}/{quote(record.media_id, safe='')}"
        await run_in_threadpool(_upload, target, key, record)
        endpoint = (target.endpoint or f"https://s3.{target.region}.amazonaws.com").rstrip("/")
        record.persisted = True
        record.s3_url = f"{endpoint}/{target.bucket}/{key}"
        count("persist")
        return JSONResponse({"data": record.info()}, headers=common_headers())

    # -- webhooks API ----------------------------------------------------------------------

    async def webhook_body(request: Request, *, partial: bool) -> dict[str, Any] | Response:
        """A create (or, ``partial``, an update) body, or the 400 that refuses it."""
        try:
            doc = await request.json()
        except ValueError:
            return _error(400, "Body must be JSON")
        problem = webhooks.validate(doc, partial=partial)
        return _error(400, problem) if problem else dict(doc)

    def owned(account: str, webhook_id: str) -> webhooks.WebhookRecord | Response:
        record = world.webhooks.get(webhook_id)
        if record is None or record.account != account:
            return _error(404, "Webhook not found")
        return record

    async def webhooks_collection(request: Request) -> Response:
        account, refused = authorise(request)
        if refused is not None or account is None:
            return refused or _error(401, "Invalid API key")
        if request.method == "GET":
            mine = [w.public() for w in world.webhooks.values() if w.account == account]
            return JSONResponse({"data": mine}, headers=common_headers())
        doc = await webhook_body(request, partial=False)
        if isinstance(doc, Response):
            return doc
        record = webhooks.create(account, doc)
        world.webhooks[record.id] = record
        count("webhook_create")
        return JSONResponse({"data": record.public()}, status_code=201, headers=common_headers())

    async def webhook_item(request: Request) -> Response:
        account, refused = authorise(request)
        if refused is not None or account is None:
            return refused or _error(401, "Invalid API key")
        found = owned(account, request.path_params["webhook_id"])
        if isinstance(found, Response):
            return found
        if request.method == "DELETE":
            del world.webhooks[found.id]
            return JSONResponse({"data": {"id": found.id, "deleted": True}})
        if request.method == "GET":
            return JSONResponse({"data": found.public()}, headers=common_headers())
        doc = await webhook_body(request, partial=True)
        if isinstance(doc, Response):
            return doc
        webhooks.update(found, doc)
        count("webhook_update")
        return JSONResponse({"data": found.public()}, headers=common_headers())

    # -- control routes --------------------------------------------------------------------

    async def deliver(request: Request) -> Response:
        """Send an event to the account's registered webhooks, as Titan would."""
        doc = await request.json()
        mine = [w for w in world.webhooks.values() if w.account == doc["account"]]
        async with httpx.AsyncClient(timeout=30) as client:
            results = await webhooks.deliver(client, mine, doc["envelope"])
        return JSONResponse({"data": results})

    async def add_account(request: Request) -> Response:
        doc = await request.json()
        world.accounts[doc["apiKey"]] = doc["account"]
        if doc.get("s3"):
            world.s3[doc["account"]] = S3Target(**doc["s3"])
        return JSONResponse({"ok": True})

    async def add_media(request: Request) -> Response:
        doc = await request.json()
        items = doc if isinstance(doc, list) else [doc]
        made: list[dict[str, Any]] = []
        for spec in items:
            media_id = spec.get("mediaId") or secrets.token_hex(12).upper()
            sample = spec.get("sample")
            if sample is not None and sample not in content.SAMPLES:
                return _error(400, f"sample must be one of {sorted(content.SAMPLES)}")
            record = MediaRecord(
                account=spec["account"],
                session=spec.get("session", "default"),
                media_id=media_id,
                message_id=spec.get("messageId") or "3EB0" + secrets.token_hex(8).upper(),
                mime_type=(
                    content.SAMPLES[sample][1]
                    if sample
                    else spec.get("mimeType", "application/octet-stream")
                ),
                size=len(content.sample_bytes(sample)) if sample else int(spec["size"]),
                gone=bool(spec.get("gone", False)),
                sample=sample,
            )
            world.media[(record.account, media_id)] = record
            made.append(
                record.info()
                | {
                    "sha256": await run_in_threadpool(
                        content.media_sha256, media_id, record.size, record.sample
                    )
                }
            )
        return JSONResponse({"data": made})

    async def set_faults(request: Request) -> Response:
        doc = await request.json()
        with world.lock:
            world.faults = Faults(**doc)
        return JSONResponse({"ok": True})

    async def stats(_: Request) -> Response:
        with world.lock:
            return JSONResponse(dict(world.stats))

    async def reset(_: Request) -> Response:
        with world.lock:
            world.media.clear()
            world.faults = Faults()
            world.stats.clear()
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/api/sessions/{session}/media/{media_id}", get_media, methods=["GET"]),
            Route("/api/sessions/{session}/media/{media_id}/download", download, methods=["POST"]),
            Route("/api/sessions/{session}/media/{media_id}/persist", persist, methods=["POST"]),
            Route("/api/webhooks", webhooks_collection, methods=["GET", "POST"]),
            Route(
                "/api/webhooks/{webhook_id}",
                webhook_item,
                methods=["GET", "PATCH", "PUT", "DELETE"],
            ),
            Route("/_sim/blob/{token}", blob, methods=["GET"]),
            Route("/_sim/deliver", deliver, methods=["POST"]),
            Route("/_sim/accounts", add_account, methods=["POST"]),
            Route("/_sim/media", add_media, methods=["POST"]),
            Route("/_sim/faults", set_faults, methods=["POST"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/reset", reset, methods=["POST"]),
        ]
    )


class _ChunkReader:
    """A file-like view of the generated chunks, for boto3's upload_fileobj."""

    def __init__(self, record: MediaRecord) -> None:
        self._chunks = content.media_chunks(record.media_id, record.size, record.sample)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            piece = next(self._chunks, None)
            if piece is None:
                break
            self._buffer += piece
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _upload(target: S3Target, key: str, record: MediaRecord) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region,
        aws_access_key_id=target.access_key_id,
        aws_secret_access_key=target.secret_access_key,
        config=Config(
            request_checksum_calculation="when_required", s3={"addressing_style": "path"}
        ),
    )
    # boto3 needs only read(size) of a file object, which the reader has.
    reader = cast(IO[bytes], _ChunkReader(record))
    client.upload_fileobj(reader, target.bucket, key, ExtraArgs={"ContentType": record.mime_type})
