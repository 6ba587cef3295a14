"""The fault-injection suite's quick profile in CI: every scenario loses and duplicates nothing.

``redis_restart`` and ``receiver_kill`` run with the product's default timings and must settle
within two minutes of the fault, each media downloaded once (``DEFAULT_TIMINGS``).
The full profile (a few hundred events per scenario, 24 MB videos, a 20 s S3 outage) is
``python -m devstack.faults``; docs/reliability.md records its figures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack.faults import QUICK, SCENARIOS, Outcome, postgres_available, run_scenario
from tests.conftest import s3_of

pytestmark = pytest.mark.skipif(
    not postgres_available(), reason="the fault suite restarts a private embedded PostgreSQL"
)

# What each scenario must show to prove its fault actually happened.
BIT: dict[str, Callable[[Outcome], bool]] = {
    "worker_kill": lambda o: o.retried_rows > 0,
    "redis_restart": lambda o: (
        o.evidence.endswith("-> 0 messages at restart") and not o.evidence.startswith("queue 0 ")
    ),
    "s3_down": lambda o: o.retried_rows > 0,
    "titan_faults": lambda o: o.retried_rows > 0,
    "postgres_restart": lambda o: o.refused > 0,
    "media_gone": lambda o: o.failed > 0,
    "receiver_kill": lambda o: o.refused > 0,
}


# On a real S3 server too (Ceph's RADOS Gateway): the scenarios whose fault meets the bucket
# (its outage, transfers killed mid-upload, Titan failing mid-stream). Redis, PostgreSQL and
# receiver restarts never reach S3 and run on moto only (they are the suite's slowest).
ON_RGW = ("s3_down", "worker_kill", "titan_faults", "media_gone")
CASES = [pytest.param(s, "moto", id=s) for s in SCENARIOS] + [
    pytest.param(s, "rgw", id=f"{s}-rgw", marks=pytest.mark.rgw) for s in ON_RGW
]


@pytest.mark.parametrize(("scenario", "s3"), CASES)
def test_scenario_loses_and_duplicates_nothing(
    scenario: str, s3: str, request: pytest.FixtureRequest
) -> None:
    s3_endpoint = s3_of(request, "rgw") if s3 == "rgw" else None
    outcome = run_scenario(scenario, QUICK, s3_endpoint=s3_endpoint)
    assert outcome.problems == [], outcome.problems
    assert (outcome.lost, outcome.duplicated, outcome.stray_uploads, outcome.sha_mismatch) == (
        0,
        0,
        0,
        0,
    ), outcome.problems
    assert outcome.archived + outcome.failed == outcome.events
    assert BIT[scenario](outcome), f"the fault did not bite: {outcome}"
    if scenario == "media_gone":
        assert outcome.objects == outcome.archived == outcome.events - outcome.failed
    else:
        assert outcome.failed == 0 and outcome.objects == outcome.events
