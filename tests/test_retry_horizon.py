"""Archived within WhatsApp's ~14 days whatever happens: a Titan outage many times longer than
the old attempt budget fails no row, and everything archives once Titan is back, with no
manual step; a row whose horizon passes while Titan is down ends failed, saying why.

Real processes (simulator, receiver, a worker running beat), compressed timings set through
the documented settings: a 1-hour horizon, attempts capped at 3 for dying workers only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack import processes
from devstack.fixtures import TenantSetup, Web, add_tenant, process_env, running_archiver
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia, Simulator, post_signed

HORIZON = 3600.0
OLD_BUDGET = 3  # ARCHIVER_MAX_ATTEMPTS: once the whole retry budget, now only for crashes


@dataclass
class Stack:
    database_url: str
    web: Web
    sim: Simulator
    tenant: TenantSetup
    client: httpx.Client

    def send(self, media: list[SentMedia], *, message_time: float | None = None) -> None:
        for item in media:
            envelope: dict[str, Any] = item.envelope
            if message_time is not None:
                envelope["payload"]["timestamp"] = int(message_time)
            url = f"{self.web.receiver_url}/webhooks/{self.tenant.name}"
            assert post_signed(self.client, url, self.tenant.hmac_key, envelope).status_code == 202

    def rows(self, media: list[SentMedia]) -> dict[str, Media]:
        ids = {m.media_id for m in media}
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                found = list(session.exec(select(Media)))
        finally:
            engine.dispose()
        return {row.media_id: row for row in found if row.media_id in ids}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, s3_endpoint: str
) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("horizon")
    broker = redis_url.rsplit("/", 1)[0] + "/7"
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(
            database_url,
            broker,
            ARCHIVER_RETRY_HORIZON_SECONDS=str(HORIZON),
            ARCHIVER_MAX_ATTEMPTS=str(OLD_BUDGET),
            ARCHIVER_RETRY_BASE_SECONDS="0.2",
            ARCHIVER_RETRY_MAX_SECONDS="1",
        )
        with (
            running_archiver("horizon", env, tmp) as (web, sim),
            httpx.Client(timeout=30) as client,
        ):
            tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="horizon")
            yield Stack(database_url, web, sim, tenant, client)


def _wait(condition: Any, timeout: float, what: str) -> None:
    processes.wait_until(condition, timeout=timeout, interval=0.25, what=what)


def test_a_long_titan_outage_fails_no_row_and_all_archive_when_it_ends(stack: Stack) -> None:
    media = [
        stack.sim.make_media(account="horizon", message_type="image", size=30_000) for _ in range(4)
    ]
    stack.sim.set_faults(unavailable=1_000_000)  # every media call answers 503
    try:
        stack.send(media)
        # Many times the old budget of attempts, every one answered 503: still waiting.
        _wait(
            lambda: all(r.attempts >= 4 * OLD_BUDGET for r in stack.rows(media).values()),
            timeout=120,
            what="attempts well past the old budget",
        )
        rows = stack.rows(media)
        assert {r.status for r in rows.values()} <= {"retrying", "archiving", "queued"}
        assert all("503" in (r.last_error or "") for r in rows.values())
    finally:
        stack.sim.set_faults()
    _wait(
        lambda: all(r.status == "archived" for r in stack.rows(media).values()),
        timeout=60,
        what="archived after the outage",
    )
    for item in media:
        assert stack.rows(media)[item.media_id].sha256 == item.sha256


def test_a_row_whose_horizon_passes_while_titan_is_down_fails_saying_so(stack: Stack) -> None:
    expiring = [stack.sim.make_media(account="horizon", message_type="image", size=10_000)]
    fresh = [stack.sim.make_media(account="horizon", message_type="image", size=10_000)]
    stack.sim.set_faults(unavailable=1_000_000)
    try:
        # Sent 4 s before its horizon ends; the other just now, with an hour to go.
        stack.send(expiring, message_time=time.time() - HORIZON + 4)
        stack.send(fresh)
        _wait(
            lambda: all(r.status == "failed" for r in stack.rows(expiring).values()),
            timeout=60,
            what="the expiring row to fail",
        )
        (row,) = stack.rows(expiring).values()
        assert row.last_error is not None
        assert row.last_error.startswith("expired before it could be archived")
        assert "503" in row.last_error
        assert all(r.status != "failed" for r in stack.rows(fresh).values())
    finally:
        stack.sim.set_faults()
    _wait(
        lambda: all(r.status == "archived" for r in stack.rows(fresh).values()),
        timeout=60,
        what="the fresh row to archive",
    )
