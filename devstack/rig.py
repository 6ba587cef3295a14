"""One test rig: a running archiver (database, process environment, the Titan simulator, a
receiver, workers) and what every test does with it: add a tenant, make and send signed
media, read the rows, wait for a status, run the CLI. Test modules extend ``Rig`` with
what only they need instead of writing their own stack."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.settings import Settings
from archiver.tables import Media, Tenant
from devstack import processes
from devstack.fixtures import TenantSetup, add_tenant, running_archiver, settings_of
from titan_simulator.sender import SentMedia, Simulator, post_signed


class RedisDatabases:
    """Hands each rig a Redis database of its own, emptied first: two rigs never share a
    broker (and a queue left over by an earlier test never reaches a later one)."""

    def __init__(self, redis_url: str, first: int = 1, count: int = 15) -> None:
        self._base = redis_url.rsplit("/", 1)[0]
        self._numbers = list(range(first, first + count))
        self._next = 0

    def take(self) -> str:
        number = self._numbers[self._next % len(self._numbers)]
        self._next += 1
        url = f"{self._base}/{number}"
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()
        return url


@dataclass
class Rig:
    database_url: str
    s3_endpoint: str
    receiver_url: str
    sim: Simulator
    env: dict[str, str]
    client: httpx.Client

    # -- tenants and media ------------------------------------------------------------------

    def tenant(self, name: str | None = None, *, strategy: str = "download") -> TenantSetup:
        """A tenant with its own Titan key at the simulator and its own bucket."""
        return add_tenant(
            self.database_url,
            sim=self.sim,
            s3_endpoint=self.s3_endpoint,
            name=name or f"t-{secrets.token_hex(3)}",
            strategy=strategy,
        )

    def media(
        self,
        tenant: TenantSetup,
        kind: str = "image",
        *,
        size: int = 3000,
        gone: bool = False,
        event: str = "message.received",
        payload: dict[str, Any] | None = None,
    ) -> SentMedia:
        item = self.sim.make_media(account=tenant.name, message_type=kind, size=size, gone=gone)
        item.envelope["event"] = event
        item.envelope["payload"].update(payload or {})
        return item

    def post(self, tenant: TenantSetup, envelope: dict[str, Any]) -> httpx.Response:
        url = f"{self.receiver_url}/webhooks/{tenant.name}"
        return post_signed(self.client, url, tenant.hmac_key, envelope)

    def send(self, tenant: TenantSetup, *items: SentMedia) -> None:
        """Deliver each item's webhook; each must be accepted (202)."""
        for item in items:
            answer = self.post(tenant, item.envelope)
            assert answer.status_code == 202, answer.text

    # -- rows ---------------------------------------------------------------------------------

    def rows(self, tenant: TenantSetup | None = None) -> dict[str, Media]:
        """Media rows by media id: the tenant's, or every tenant's."""
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                query = select(Media)
                if tenant is not None:
                    owner = session.exec(select(Tenant).where(Tenant.name == tenant.name)).one()
                    query = query.where(Media.tenant_id == owner.id)
                return {row.media_id: row for row in session.exec(query)}
        finally:
            engine.dispose()

    def wait_status(
        self,
        items: Iterable[SentMedia | str],
        status: str = "archived",
        *,
        tenant: TenantSetup | None = None,
        timeout: float = 60,
    ) -> dict[str, Media]:
        """Wait until every item's row has ``status``; the rows then."""
        ids = [i if isinstance(i, str) else i.media_id for i in items]

        def done() -> bool:
            rows = self.rows(tenant)
            return all(i in rows and rows[i].status == status for i in ids)

        processes.wait_until(done, timeout=timeout, interval=0.25, what=f"{len(ids)} {status}")
        rows = self.rows(tenant)
        return {i: rows[i] for i in ids}

    # -- the command line and settings ---------------------------------------------------------

    def cli(
        self, *args: str, codes: tuple[int, ...] = (0,), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``titan-archiver ARGS`` with the processes' settings; its exit code among ``codes``."""
        result = subprocess.run(
            [sys.executable, "-m", "archiver.cli", *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode in codes, result.stderr
        return result

    def settings(self) -> Settings:
        """The settings the processes run with."""
        return settings_of(self.env)


@contextmanager
def running_rig(
    name: str,
    *,
    database_url: str,
    s3_endpoint: str,
    env: dict[str, str],
    tmp: Path,
    render: bool = False,
) -> Iterator[Rig]:
    """A receiver, a worker running beat and the simulator, with ``env`` (and with
    ``render``, a render worker of its own, as the Procfile's); stopped after."""
    with running_archiver(name, env, tmp) as (web, sim), httpx.Client(timeout=30) as client:
        renderer = None
        if render:
            argv = [*processes.worker_argv(concurrency=1), "-n", f"{name}-render@%h"]
            renderer = processes.start_process(
                f"{name}-render", argv, {**env, "ARCHIVER_WORKER_QUEUES": "render"}
            )
        try:
            yield Rig(database_url, s3_endpoint, web.receiver_url, sim, env, client)
        finally:
            if renderer is not None:
                renderer.stop()
