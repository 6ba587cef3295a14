"""Tenants as the webhook path needs them (id, strategy, HMAC keys, capture policy), cached
briefly in-process.

A webhook then costs no database read and no decryption before its batch is written.
Changes to a tenant (a new HMAC key, a removal) take effect within ``ttl`` seconds.
Unknown names are cached too, so spraying made-up tenant names cannot load the database.
An expired entry is read again once, however many webhooks for it arrive meanwhile: they
wait on that one read (``fetch``). Before, every webhook in flight read it on its own: 32
reads in worker threads every ``ttl`` under load, taking the GIL from the event loop (a
tenth of a cold receiver's CPU in a profile; under 1 % once warm: docs/performance.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from archiver.errors import NotFound
from archiver.infra.db import session_scope
from archiver.media.capture import CapturePolicy
from archiver.secrets_box import SecretBox
from archiver.tenants.tenants import get_tenant, secrets_of


@dataclass(frozen=True)
class WebhookTenant:
    id: int
    name: str
    strategy: str
    hmac_keys: tuple[str, ...]
    capture: CapturePolicy = field(default_factory=CapturePolicy)
    notify: bool = False  # has a notification endpoint


class TenantCache:
    def __init__(self, *, engine: Engine, box: SecretBox, ttl: float = 5.0, size: int = 10_000):
        self._engine = engine
        self._box = box
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, WebhookTenant | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, asyncio.Future[WebhookTenant | None]] = {}

    def cached(self, name: str) -> tuple[bool, WebhookTenant | None]:
        """(hit, tenant) without touching the database; safe on the event loop."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[0] < time.monotonic():
                return False, None
            self._entries.move_to_end(name)
            return True, entry[1]

    def may_reload(self, name: str, *, min_age: float = 1.0) -> bool:
        """Whether the cached entry of ``name`` is at least ``min_age`` seconds old: a
        signature that fails against it may be signed with a key rotated since, so it is
        read again, but at most once a ``min_age`` per tenant (bad signatures are cheap to
        send; database reads are not)."""
        with self._lock:
            entry = self._entries.get(name)
            return entry is None or time.monotonic() - (entry[0] - self._ttl) >= min_age

    async def fetch(self, name: str) -> WebhookTenant | None:
        """``load`` in a worker thread, shared: a coroutine asking while a read of ``name``
        is under way waits for that read's answer instead of starting another. A caller
        that gives up (its client went away) does not cancel the read for the others."""
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(self.load, name))
            self._loading[name] = pending
            pending.add_done_callback(lambda done: self._read(name, done))
        return await asyncio.shield(pending)

    def _read(self, name: str, done: asyncio.Future[WebhookTenant | None]) -> None:
        self._loading.pop(name, None)
        if not done.cancelled():
            done.exception()  # raised to every waiter; not "never retrieved" when none is left

    def load(self, name: str) -> WebhookTenant | None:
        """Read the tenant from the database (blocking) and cache the answer."""
        with session_scope(self._engine) as session:
            try:
                tenant = get_tenant(session, name=name)
            except NotFound:
                found = None
            else:
                found = WebhookTenant(
                    id=tenant.saved_id,
                    name=tenant.name,
                    strategy=tenant.strategy,
                    hmac_keys=secrets_of(tenant, box=self._box).hmac_keys,
                    capture=CapturePolicy.of(tenant),
                    notify=bool(tenant.notify_url),
                )
        with self._lock:
            self._entries[name] = (time.monotonic() + self._ttl, found)
            self._entries.move_to_end(name)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return found
