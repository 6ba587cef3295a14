"""The web process's per-tenant S3 clients (for presigning), rebuilt when a tenant changes."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from archiver.buckets import tenant_s3_client
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Tenant
from archiver.tenants import secrets_of


class TenantClients:
    def __init__(self, *, settings: Settings, box: SecretBox) -> None:
        self._settings = settings
        self._box = box
        self._clients: dict[int, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def s3(self, tenant: Tenant) -> Any:
        fingerprint = hashlib.sha256(
            repr(
                (
                    tenant.s3_endpoint,
                    tenant.s3_region,
                    tenant.s3_access_key_id,
                    tenant.s3_secret_enc,
                )
            ).encode()
        ).hexdigest()
        with self._lock:
            cached = self._clients.get(tenant.id or 0)
            if cached and cached[0] == fingerprint:
                return cached[1]
        secrets = secrets_of(tenant, box=self._box)
        client = tenant_s3_client(
            tenant, secret_access_key=secrets.s3_secret_access_key, settings=self._settings
        )
        with self._lock:
            self._clients[tenant.id or 0] = (fingerprint, client)
        return client
