"""Retry delays grow exponentially, spread with jitter, and honour Retry-After."""

import random

from worker.backoff import retry_delay


def test_delay_grows_with_attempts_within_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (4, 40)]:
        delay = retry_delay(attempt, base=5, cap=600, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_delay_is_capped() -> None:
    assert retry_delay(30, base=5, cap=60, rng=random.Random(2)) <= 60


def test_retry_after_is_a_floor() -> None:
    assert retry_delay(1, base=1, cap=600, retry_after=30, rng=random.Random(3)) >= 30


def test_retry_after_cannot_exceed_the_cap() -> None:
    assert retry_delay(1, base=1, cap=60, retry_after=3600, rng=random.Random(3)) <= 60
