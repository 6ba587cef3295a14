"""The simulator's in-memory world: accounts, their media, and the fault plan."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from titan_simulator.webhooks import WebhookRecord


@dataclass
class S3Target:
    """The bucket an account's 'persist' writes into (Titan's console S3 settings)."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None


@dataclass
class MediaRecord:
    account: str
    session: str
    media_id: str
    message_id: str
    mime_type: str
    size: int
    persisted: bool = False
    s3_url: str | None = None
    gone: bool = False
    sample: str | None = None  # serve titan_simulator/samples/<type> instead of noise

    def info(self) -> dict[str, Any]:
        return {
            "id": self.media_id,
            "messageId": self.message_id,
            "mimeType": self.mime_type,
            "fileLength": self.size,
            "persisted": self.persisted,
            "s3Url": self.s3_url if self.persisted else None,
            "session": self.session,
        }


@dataclass
class Faults:
    """What the next requests to the media API suffer; counters count down per request."""

    rate_limit: int = 0  # answer 429 with Retry-After
    retry_after: int = 1
    bad_gateway: int = 0  # answer 502
    unavailable: int = 0  # answer 503 (an outage: set a large count, then clear the faults)
    truncate: int = 0  # downloads send half the body under a full Content-Length
    wrong_length: int = 0  # downloads send a shorter body with a matching Content-Length
    slow_ms: int = 0  # delay per download chunk
    deprecation: bool = False  # add Deprecation / Sunset headers
    redirect: bool = False  # downloads answer 302 to a blob URL on another origin
    exhausted: int = 0  # successful answers saying X-RateLimit-Remaining: 0

    def take(self, name: str) -> bool:
        value = getattr(self, name)
        if value > 0:
            setattr(self, name, value - 1)
            return True
        return False


@dataclass
class World:
    accounts: dict[str, str] = field(default_factory=dict)  # api key -> account
    s3: dict[str, S3Target] = field(default_factory=dict)  # account -> persist target
    media: dict[tuple[str, str], MediaRecord] = field(default_factory=dict)
    webhooks: dict[str, WebhookRecord] = field(default_factory=dict)  # id -> webhook
    faults: Faults = field(default_factory=Faults)
    stats: Counter[str] = field(default_factory=Counter)
    lock: threading.RLock = field(default_factory=threading.RLock)
