"""What one worker process holds: settings, DB engine, Celery app, and per-tenant clients.

Created lazily in the process that uses them, never at import, so nothing crosses
Celery's fork; a client is rebuilt when its tenant's settings change.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import httpx
from celery import Celery
from sqlalchemy import Engine

from archiver.infra.buckets import TenantS3Clients
from archiver.infra.db import make_engine, session_scope
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Tenant
from archiver.tenants.tenants import TenantSecrets, get_tenant_by_id, secrets_of
from worker.titan_client import TitanClient


def _fingerprint(*values: object) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()


@dataclass
class WorkerResources:
    settings: Settings
    celery: Celery
    engine: Engine
    box: SecretBox
    s3: TenantS3Clients
    _tenants: dict[int, tuple[float, Tenant, TenantSecrets]] = field(default_factory=dict)
    _titan: dict[int, tuple[str, TitanClient]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, celery: Celery, engine: Engine) -> WorkerResources:
        box = settings.secret_box()
        return cls(
            settings=settings,
            celery=celery,
            engine=engine,
            box=box,
            s3=TenantS3Clients(settings=settings, box=box),
        )

    def tenant(self, tenant_id: int, *, ttl: float = 10.0) -> tuple[Tenant, TenantSecrets]:
        """The tenant and its decrypted secrets, read at most every ``ttl`` seconds.

        A changed key or bucket reaches the worker within ``ttl``; NotFound if it is gone.
        """
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        with session_scope(self.engine) as session:
            tenant = get_tenant_by_id(session, tenant_id=tenant_id)
        secrets = secrets_of(tenant, box=self.box)
        self._tenants[tenant_id] = (time.monotonic() + ttl, tenant, secrets)
        return tenant, secrets

    def forget_tenant(self, tenant_id: int) -> None:
        """Read the tenant afresh next time (it was just paused)."""
        self._tenants.pop(tenant_id, None)

    def titan(self, tenant: Tenant, secrets: TenantSecrets) -> TitanClient:
        assert tenant.id is not None
        print_ = _fingerprint(tenant.titan_url, secrets.titan_api_key)
        cached = self._titan.get(tenant.id)
        if cached and cached[0] == print_:
            return cached[1]
        if cached:
            cached[1].close()
        client = TitanClient(
            base_url=tenant.titan_url,
            api_key=secrets.titan_api_key,
            timeout=httpx.Timeout(
                self.settings.titan_read_timeout, connect=self.settings.titan_connect_timeout
            ),
        )
        self._titan[tenant.id] = (print_, client)
        return client


_current: tuple[int, WorkerResources] | None = None


def resources(settings: Settings, celery: Celery) -> WorkerResources:
    """This process's resources, built on first use after any fork."""
    global _current
    if _current is None or _current[0] != os.getpid():
        engine = make_engine(settings.database_url, durable_commits=False)
        _current = (os.getpid(), WorkerResources.build(settings, celery, engine))
    return _current[1]
