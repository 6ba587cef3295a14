"""Retry delays grow exponentially, spread with jitter, honour Retry-After in full, and stop
at the row's retry horizon."""

import random
from datetime import UTC, datetime, timedelta

from archiver.backoff import horizon, next_attempt, retry_delay

T0 = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


def test_delay_grows_with_attempts_within_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (4, 40)]:
        delay = retry_delay(attempt, base=5, cap=600, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_delay_is_capped() -> None:
    assert retry_delay(30, base=5, cap=60, rng=random.Random(2)) <= 60


def test_weeks_of_attempts_neither_overflow_nor_exceed_the_cap() -> None:
    assert 300 <= retry_delay(5000, base=5, cap=600, rng=random.Random(2)) <= 600


def test_retry_after_is_a_floor() -> None:
    assert retry_delay(1, base=1, cap=600, retry_after=30, rng=random.Random(3)) >= 30


def test_retry_after_is_honoured_in_full_even_beyond_the_backoff_cap() -> None:
    assert retry_delay(1, base=1, cap=60, retry_after=3600, rng=random.Random(3)) == 3600


def test_horizon_counts_from_the_message_never_from_later_than_its_arrival() -> None:
    day = 86400.0
    assert horizon(T0, T0 - timedelta(hours=5), seconds=day) == T0 + timedelta(hours=19)
    assert horizon(T0, None, seconds=day) == T0 + timedelta(days=1)
    # A message time in the future (a skewed clock) does not extend the horizon.
    assert horizon(T0, T0 + timedelta(days=3), seconds=day) == T0 + timedelta(days=1)


def test_the_next_attempt_never_falls_past_the_horizon() -> None:
    deadline = T0 + timedelta(minutes=10)
    assert next_attempt(now=T0, delay=60, deadline=deadline) == T0 + timedelta(minutes=1)
    assert next_attempt(now=T0, delay=3600, deadline=deadline) == deadline
    assert next_attempt(now=deadline, delay=1, deadline=deadline) is None
