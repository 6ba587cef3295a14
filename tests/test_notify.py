"""Notifications' pure core: the Standard Webhooks signature, the retry schedule, and when an
event is given up; the erasure selector refuses to name no rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archiver.governance.erasure import Selector
from archiver.tenants import notify


def test_signs_like_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification's test suite.
    signature = notify.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secrets_are_whsec_base64_of_enough_bytes() -> None:
    made = notify.new_secret()
    assert made.startswith("whsec_") and len(notify.secret_bytes(made)) == 32
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError):
            notify.secret_bytes(bad)


def test_retries_double_from_the_base_up_to_an_hour() -> None:
    delays = [notify.retry_delay(n, base=5) for n in range(1, 14)]
    # Equal jitter (archiver/backoff.py): between half the step and the step.
    assert 2.5 <= delays[0] <= 5 and 5 <= delays[1] <= 10 and 10 <= delays[2] <= 20
    assert max(delays) <= notify.MAX_DELAY and delays[-1] >= notify.MAX_DELAY / 2
    # With a 5 s base, a day holds about 30 attempts: an endpoint down for hours still gets it.
    elapsed, attempts = 0.0, 0
    while elapsed < 86400:
        attempts += 1
        elapsed += min(notify.MAX_DELAY, 5 * 2 ** max(0, attempts - 1))
    assert 25 <= attempts <= 35


def test_an_event_is_given_up_only_after_its_horizon() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.values: dict[str, object] = {}

        def execute(self, statement: object) -> None:
            self.values = dict(statement.compile().params)  # type: ignore[attr-defined]

    created = datetime(2026, 11, 23, tzinfo=UTC)
    due = notify.Due(1, 1, "m", "{}", 5, created)
    refused = notify.Attempt(False, "endpoint answered 500")
    for now, expected in (
        (created + timedelta(hours=3), "retrying"),
        (created + timedelta(hours=23, minutes=59, seconds=59), "failed"),
        (created + timedelta(days=2), "failed"),
    ):
        session = Recorder()
        outcome = notify.settle(
            session,  # type: ignore[arg-type]
            due,
            refused,
            now=now,
            base=5,
            horizon=timedelta(days=1),
        )
        assert outcome == expected, now
        assert session.values["last_error"] == "endpoint answered 500"
    session = Recorder()
    assert (
        notify.settle(
            session,  # type: ignore[arg-type]
            due,
            notify.Attempt(True),
            now=created,
            base=5,
            horizon=timedelta(days=1),
        )
        == "delivered"
    )


def test_an_erasure_must_name_its_rows() -> None:
    with pytest.raises(ValueError):
        Selector().where(1)
    assert len(Selector(sender="+55").where(1)) == 2
    assert Selector(chat="x@g.us", include_held=True).describe() == {
        "chat": "x@g.us",
        "includeHeld": True,
    }
