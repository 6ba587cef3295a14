"""When to try again, for transfers and notifications alike: exponential backoff with
jitter, the server's Retry-After honoured in full, and never past a horizon (pure)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

_MAX_DOUBLINGS = 40  # 2**40 steps: far past any cap, and no float overflow after weeks


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before attempt ``attempt + 1``: capped backoff, never less than Retry-After."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
    # "Equal jitter": at least half the exponential step, so retries spread but still back off.
    delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return round(delay, 3)


def horizon(received_at: datetime, message_at: datetime | None, *, seconds: float) -> datetime:
    """When a row's retries stop: its message time (never later than its arrival) plus
    ``seconds``. WhatsApp's copy expires counting from the message, not from our retries."""
    start = received_at if message_at is None else min(message_at, received_at)
    return start + timedelta(seconds=seconds)


def next_attempt(*, now: datetime, delay: float, deadline: datetime) -> datetime | None:
    """When to try again, or None when the horizon has passed; never later than it."""
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=delay), deadline)
