"""The one exception tree of titan-archiver; only the edges map these to HTTP statuses or retries.

AppError                      base of everything raised on purpose
├── ConfigError               a setting is missing, malformed or a placeholder
├── InvalidSignature          webhook signature missing, malformed or wrong (HTTP 401)
├── PayloadError              signed body is not a usable Titan envelope (HTTP 400)
├── NotFound                  a tenant, API key or media row does not exist
├── Conflict                  the action clashes with existing state (e.g. tenant name taken)
├── Unavailable               database or broker down: nothing was accepted (HTTP 503)
├── TransientError            a transfer failed but may succeed later (retry, honour retry_after)
├── PermanentError            a transfer can never succeed (mark the row failed, no retry)
└── TenantError               the tenant's settings are refused (Titan key 401/403, bucket
                              credentials or bucket): pause the tenant, keep the row waiting
"""

from __future__ import annotations


class AppError(Exception):
    """Base of every error titan-archiver raises on purpose."""


class ConfigError(AppError):
    """A setting is missing, malformed, or still a placeholder."""


class InvalidSignature(AppError):
    """The webhook signature is missing, malformed or does not match any key."""


class PayloadError(AppError):
    """A correctly signed body is not a usable Titan envelope."""


class NotFound(AppError):
    """A tenant, API key or media row does not exist."""


class Conflict(AppError):
    """The requested change clashes with existing state."""


class Unavailable(AppError):
    """A dependency (database, broker) is down; the request was not accepted."""


class TransientError(AppError):
    """A transfer failed in a way that may succeed later.

    ``retry_after`` is the delay in seconds the remote side asked for, if any;
    ``rate_limited`` says the remote side limits the tenant's key (Titan's 429), so every
    transfer of the tenant should hold off, not only this one.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, rate_limited: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class PermanentError(AppError):
    """A transfer can never succeed (unknown or expired media)."""


class TenantError(AppError):
    """Titan or the bucket refuses the tenant's own settings (an expired or disabled API key,
    wrong bucket credentials, a missing bucket): every row of the tenant would fail the same
    way until an operator fixes the tenant, so the tenant is paused and its rows wait."""
