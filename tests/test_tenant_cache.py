"""The receiver's tenant cache on a real database: one read per expiry, however many
webhooks ask for the tenant meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time

from sqlalchemy import Engine

from receiver.tenant_cache import TenantCache, WebhookTenant
from tests.test_media_rows import BOX, make_tenant


class CountingCache(TenantCache):
    """Counts its database reads; each read waits until ``release`` is set, so the test
    decides how long one is under way."""

    def __init__(self, engine: Engine, *, ttl: float) -> None:
        super().__init__(engine=engine, box=BOX, ttl=ttl)
        self.reads = 0
        self.release = threading.Event()

    def load(self, name: str) -> WebhookTenant | None:
        self.reads += 1
        assert self.release.wait(10)
        return super().load(name)


async def _fetch_many(cache: CountingCache, name: str, count: int) -> list[WebhookTenant | None]:
    waiting = [asyncio.create_task(cache.fetch(name)) for _ in range(count)]
    await asyncio.sleep(0.05)  # every fetch has started and found the read under way
    cache.release.set()
    return await asyncio.gather(*waiting)


def test_concurrent_webhooks_share_one_read_of_their_tenant(engine: Engine) -> None:
    make_tenant(engine, "acme")
    cache = CountingCache(engine, ttl=0.2)

    found = asyncio.run(_fetch_many(cache, "acme", 32))

    assert cache.reads == 1
    assert {t.name if t else None for t in found} == {"acme"}
    assert cache.cached("acme")[0]
    # Once the entry expires, the next webhook reads the tenant again (and only once).
    time.sleep(0.25)
    assert not cache.cached("acme")[0]
    cache.release.clear()
    again = asyncio.run(_fetch_many(cache, "acme", 8))
    assert cache.reads == 2
    assert all(t is not None and t.name == "acme" for t in again)


def test_an_unknown_tenant_is_read_once_and_cached_as_unknown(engine: Engine) -> None:
    cache = CountingCache(engine, ttl=60)

    found = asyncio.run(_fetch_many(cache, "nobody", 16))

    assert found == [None] * 16
    assert cache.reads == 1
    assert cache.cached("nobody") == (True, None)


def test_a_waiter_that_gives_up_does_not_cancel_the_read_for_the_others(engine: Engine) -> None:
    make_tenant(engine, "acme")
    cache = CountingCache(engine, ttl=60)

    async def scenario() -> WebhookTenant | None:
        first = asyncio.create_task(cache.fetch("acme"))
        second = asyncio.create_task(cache.fetch("acme"))
        await asyncio.sleep(0.05)
        first.cancel()  # its client went away
        await asyncio.sleep(0.01)
        cache.release.set()
        return await second

    tenant = asyncio.run(scenario())

    assert tenant is not None and tenant.name == "acme"
    assert cache.reads == 1
