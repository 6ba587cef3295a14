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

import pytest

from archiver.tables import Media
from devstack import processes
from devstack.fixtures import TenantSetup, process_env
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia

HORIZON = 3600.0
OLD_BUDGET = 3  # ARCHIVER_MAX_ATTEMPTS: once the whole retry budget, now only for crashes


@dataclass
class Stack(Rig):
    horizon: TenantSetup

    def deliver(self, media: list[SentMedia], *, message_time: float | None = None) -> None:
        """Send each media's webhook, claiming it was sent at ``message_time``."""
        for item in media:
            if message_time is not None:
                item.envelope["payload"]["timestamp"] = int(message_time)
            self.send(self.horizon, item)

    def of(self, media: list[SentMedia]) -> dict[str, Media]:
        rows = self.rows(self.horizon)
        return {m.media_id: rows[m.media_id] for m in media if m.media_id in rows}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, s3_endpoint: str
) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("horizon")
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(
            database_url,
            redis_dbs.take(),
            ARCHIVER_RETRY_HORIZON_SECONDS=str(HORIZON),
            ARCHIVER_MAX_ATTEMPTS=str(OLD_BUDGET),
            ARCHIVER_RETRY_BASE_SECONDS="0.2",
            ARCHIVER_RETRY_MAX_SECONDS="1",
        )
        with running_rig(
            "horizon", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp
        ) as rig:
            yield Stack(**vars(rig), horizon=rig.tenant("horizon"))


def _wait(condition: Any, timeout: float, what: str) -> None:
    processes.wait_until(condition, timeout=timeout, interval=0.25, what=what)


def test_a_long_titan_outage_fails_no_row_and_all_archive_when_it_ends(stack: Stack) -> None:
    media = [
        stack.sim.make_media(account="horizon", message_type="image", size=30_000) for _ in range(4)
    ]
    stack.sim.set_faults(unavailable=1_000_000)  # every media call answers 503
    try:
        stack.deliver(media)
        # Many times the old budget of attempts, every one answered 503: still waiting.
        _wait(
            lambda: all(r.attempts >= 4 * OLD_BUDGET for r in stack.of(media).values()),
            timeout=120,
            what="attempts well past the old budget",
        )
        rows = stack.of(media)
        assert {r.status for r in rows.values()} <= {"retrying", "archiving", "queued"}
        assert all("503" in (r.last_error or "") for r in rows.values())
    finally:
        stack.sim.set_faults()
    _wait(
        lambda: all(r.status == "archived" for r in stack.of(media).values()),
        timeout=60,
        what="archived after the outage",
    )
    for item in media:
        assert stack.of(media)[item.media_id].sha256 == item.sha256


def test_a_row_whose_horizon_passes_while_titan_is_down_fails_saying_so(stack: Stack) -> None:
    expiring = [stack.sim.make_media(account="horizon", message_type="image", size=10_000)]
    fresh = [stack.sim.make_media(account="horizon", message_type="image", size=10_000)]
    stack.sim.set_faults(unavailable=1_000_000)
    try:
        # Sent 4 s before its horizon ends; the other just now, with an hour to go.
        stack.deliver(expiring, message_time=time.time() - HORIZON + 4)
        stack.deliver(fresh)
        _wait(
            lambda: all(r.status == "failed" for r in stack.of(expiring).values()),
            timeout=60,
            what="the expiring row to fail",
        )
        (row,) = stack.of(expiring).values()
        assert row.last_error is not None
        assert row.last_error.startswith("expired before it could be archived")
        assert "503" in row.last_error
        assert all(r.status != "failed" for r in stack.of(fresh).values())
    finally:
        stack.sim.set_faults()
    _wait(
        lambda: all(r.status == "archived" for r in stack.of(fresh).values()),
        timeout=60,
        what="the fresh row to archive",
    )
