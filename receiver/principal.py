"""Who is asking: one tenant (by its query API key or the dashboard session it signed in
with), or the admin (tenant None). The API and the dashboard both confine reads by it."""

from __future__ import annotations

from dataclasses import dataclass

from archiver.tables import Tenant


@dataclass(frozen=True)
class Principal:
    """Who is asking through the API: one tenant, or the admin (tenant None)."""

    tenant: Tenant | None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    @property
    def tenant_id(self) -> int | None:
        return None if self.tenant is None else self.tenant.id
