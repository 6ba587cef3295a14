"""When to try a failed transfer again: exponential backoff with jitter, Retry-After respected."""

from __future__ import annotations

import random


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before attempt ``attempt + 1``; never less than the server's Retry-After."""
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    # "Equal jitter": at least half the exponential step, so retries spread but still back off.
    delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return round(delay, 3)
