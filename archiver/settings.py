"""Every setting of titan-archiver, read from ``ARCHIVER_*`` environment variables.

Built only at entry points (app factory, Celery app, CLI) and passed down as values.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from archiver.errors import ConfigError
from archiver.object_keys import DEFAULT_TEMPLATE, validate_template
from archiver.queue import QUEUES, RENDER_QUEUE
from archiver.secrets_box import SecretBox

MiB = 1024 * 1024
_PLACEHOLDERS = {"changeme", "change-me", "change_me", "secret", "password", "dev", "test", "xxx"}
# Embedded defaults: only a development process (ARCHIVER_ENV=development, which
# `titan-archiver dev` sets) falls back to them. A production process without the setting
# stops and says so, instead of writing into ./archiver.db or a Redis nobody watches.
DEV_DATABASE_URL = "sqlite:///archiver.db"
DEV_BROKER_URL = "redis://127.0.0.1:6379/0"
# ARCHIVER_* names the test suite and benchmarks read (never the product): not reported.
_DEV_SIDE_NAMES = {"ARCHIVER_FUZZ_EXAMPLES", "ARCHIVER_UPDATE_SCREENSHOTS"}
_DEV_SIDE_PREFIX = "ARCHIVER_TEST_"


def is_placeholder(value: str) -> bool:
    """A value copied from a template and never filled in: a known placeholder word, or an
    angle-bracketed hint like the Kubernetes secret template's ``<32+ random characters>``."""
    lowered = value.strip().lower()
    return lowered in _PLACEHOLDERS or ("<" in value and ">" in value)


class Settings(BaseSettings):
    """titan-archiver's configuration; docs/settings.md describes each field."""

    model_config = SettingsConfigDict(env_prefix="ARCHIVER_", extra="ignore")

    env: Literal["production", "development"] = "production"
    # Required outside development: see ``database_url`` and ``broker_url`` below.
    database_url_setting: str | None = Field(default=None, validation_alias="ARCHIVER_DATABASE_URL")
    broker_url_setting: str | None = Field(default=None, validation_alias="ARCHIVER_BROKER_URL")
    secret_key: SecretStr | None = None
    # Or a file holding it (a Docker or Kubernetes secret, Compose's generated key): read
    # when ARCHIVER_SECRET_KEY itself is not set.
    secret_key_file: str | None = None
    # Master keys being rotated out (comma-separated): they still decrypt, never encrypt.
    previous_secret_keys: SecretStr | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Receiver
    admin_api_key: SecretStr | None = None
    presign_ttl_seconds: int = Field(default=300, ge=10, le=7 * 86400)
    max_body_bytes: int = Field(default=1 * MiB, ge=1024)
    retry_after_seconds: int = Field(default=5, ge=1)
    # Bearer token that /metrics (receiver and worker) requires when set.
    metrics_token: SecretStr | None = None

    # Worker
    part_size: int = Field(default=8 * MiB, ge=5 * MiB, le=512 * MiB)
    # The checksum every upload carries for the bucket to verify: sha256 (S3's
    # x-amz-checksum-sha256), or md5 (Content-MD5) for servers that verify only that, as
    # Ceph's RADOS Gateway (it stores a wrong SHA-256 checksum without a word).
    s3_checksum: Literal["sha256", "md5"] = "sha256"
    # Parts of one file uploading at once: a far bucket costs a round trip per this many
    # parts (at most; each part also waits for ARCHIVER_WORKER_BUFFER_BYTES).
    upload_parts_in_flight: int = Field(default=4, ge=1, le=16)
    # Bytes of part buffers all the transfers of one worker (its pool processes together)
    # may hold at once: parts wait for it, so a worker's transfers cost this much memory,
    # not (parts in flight + 1) x part size each. At least one part.
    worker_buffer_bytes: int = Field(default=64 * MiB, ge=5 * MiB)
    max_attempts: int = Field(default=8, ge=1)
    lease_seconds: int = Field(default=120, ge=5)
    sweep_interval_seconds: float = Field(default=60.0, ge=1)
    stuck_after_seconds: float = Field(default=600.0, ge=1)
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    retry_base_seconds: float = Field(default=5.0, ge=0.1)
    retry_max_seconds: float = Field(default=600.0, ge=1)
    # Transient failures retry until the media's time plus this (WhatsApp keeps it ~14 days).
    retry_horizon_seconds: float = Field(default=13 * 86400.0, ge=1)
    # How often beat publishes the retries that are due (and rows whose publish failed).
    dispatch_interval_seconds: float = Field(default=5.0, ge=0.5)
    # How often beat re-checks tenants a worker paused, resuming those that work again.
    pause_probe_seconds: float = Field(default=300.0, ge=1)
    # At most this many transfers of one tenant at once, across all workers (0: no cap), so
    # one tenant's burst leaves the other tenants worker slots.
    tenant_max_concurrency: int = Field(default=0, ge=0)
    # How often the beat deletes what tenants' retention periods expired, and at most how
    # many rows per tenant one pass deletes (the rest goes in the next pass).
    retention_interval_seconds: float = Field(default=600.0, ge=1)
    retention_max_rows: int = Field(default=5000, ge=1)
    # Where export bundles asked for through the admin API are written (on the workers'
    # file system; unset: the admin API refuses to make them).
    export_dir: str | None = None
    # How often the beat seals newly archived media and audit events into the ledger.
    seal_interval_seconds: float = Field(default=60.0, ge=1)
    # Fixity audits: how often the beat reads archived objects back, and how many bytes of
    # each tenant's bucket it reads in a day at most (0: no audits).
    fixity_interval_seconds: float = Field(default=3600.0, ge=1)
    fixity_bytes_per_day: int = Field(default=1024 * MiB, ge=0)
    # Notifications to tenants' endpoints: first retry after this, doubling up to an hour,
    # given up this long after the event; each attempt waits at most notify_timeout.
    notify_retry_base_seconds: float = Field(default=5.0, ge=0.1)
    notify_horizon_seconds: float = Field(default=86400.0, ge=1)
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    object_key_template: str = DEFAULT_TEMPLATE
    titan_connect_timeout: float = Field(default=10.0, gt=0)
    titan_read_timeout: float = Field(default=60.0, gt=0)
    s3_connect_timeout: float = Field(default=10.0, gt=0)
    s3_read_timeout: float = Field(default=60.0, gt=0)
    task_time_limit: int = Field(default=3600, ge=60)
    broker_visibility_timeout: int = Field(default=7200, ge=60)
    # Media announced at this size or more goes to the archive-large queue.
    large_media_bytes: int = Field(default=10 * MiB, ge=1)
    # Queues a worker consumes (comma-separated) unless it is started with -Q.
    worker_queues_csv: str = Field(
        default="archive,archive-large", validation_alias="ARCHIVER_WORKER_QUEUES"
    )
    # Address and port of each worker's Prometheus endpoint; port 0 turns it off.
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from other hosts
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)

    @field_validator("database_url_setting")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_database_url(value)

    @field_validator("broker_url_setting")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if is_placeholder(value):
            raise ValueError("ARCHIVER_BROKER_URL is still a template placeholder")
        scheme = value.partition("://")[0]
        if scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp") or "://" not in value:
            raise ValueError(
                f"ARCHIVER_BROKER_URL must be a redis://, rediss:// or amqp:// URL (got {scheme!r})"
            )
        return value

    @property
    def database_url(self) -> str:
        """The database; outside development a missing ARCHIVER_DATABASE_URL is an error."""
        return self._required(self.database_url_setting, "ARCHIVER_DATABASE_URL", DEV_DATABASE_URL)

    @property
    def broker_url(self) -> str:
        """The broker; outside development a missing ARCHIVER_BROKER_URL is an error."""
        return self._required(self.broker_url_setting, "ARCHIVER_BROKER_URL", DEV_BROKER_URL)

    def _required(self, value: str | None, name: str, embedded: str) -> str:
        if value:
            return value
        if self.env == "development":
            return embedded
        raise ConfigError(
            f"{name} is not set: a production process has no default "
            f"(set it, or ARCHIVER_ENV=development for the embedded {embedded})"
        )

    @field_validator("object_key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            return validate_template(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("worker_queues_csv")
    @classmethod
    def _queues(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        known = (*QUEUES, RENDER_QUEUE)
        unknown = sorted(set(names) - set(known))
        if not names or unknown:
            raise ValueError(f"must list queues among {', '.join(known)} (got {value!r})")
        return ",".join(names)

    @property
    def worker_queues(self) -> tuple[str, ...]:
        return tuple(self.worker_queues_csv.split(","))

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.task_time_limit >= self.broker_visibility_timeout:
            raise ValueError(
                "ARCHIVER_BROKER_VISIBILITY_TIMEOUT must exceed ARCHIVER_TASK_TIME_LIMIT, "
                "or the broker redelivers transfers that are still running"
            )
        if self.worker_buffer_bytes < self.part_size:
            raise ValueError(
                f"ARCHIVER_WORKER_BUFFER_BYTES ({self.worker_buffer_bytes}) is smaller than "
                f"ARCHIVER_PART_SIZE ({self.part_size}): not one part would fit"
            )
        if not (self.secret_key and self.secret_key.get_secret_value()) and self.secret_key_file:
            try:
                text = Path(self.secret_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"ARCHIVER_SECRET_KEY_FILE: cannot read {self.secret_key_file} "
                    f"({exc.strerror or exc})"
                ) from None
            self.secret_key = SecretStr(text)
        if self.env == "development":
            return self
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if not key:
            raise ValueError("ARCHIVER_SECRET_KEY is required outside development")
        if is_placeholder(key) or len(key) < 16:
            raise ValueError("ARCHIVER_SECRET_KEY is a placeholder or shorter than 16 characters")
        token = self.metrics_token.get_secret_value() if self.metrics_token else None
        if token is not None and (is_placeholder(token) or len(token) < 16):
            raise ValueError(
                "ARCHIVER_METRICS_TOKEN is a placeholder or shorter than 16 characters"
            )
        admin = self.admin_api_key.get_secret_value() if self.admin_api_key else None
        if admin is not None and (is_placeholder(admin) or len(admin) < 24):
            raise ValueError(
                "ARCHIVER_ADMIN_API_KEY is a placeholder or shorter than 24 characters"
            )
        return self

    def master_key(self) -> str:
        if self.secret_key is None or not self.secret_key.get_secret_value():
            raise ConfigError("ARCHIVER_SECRET_KEY is not set")
        return self.secret_key.get_secret_value()

    def older_master_keys(self) -> list[str]:
        raw = self.previous_secret_keys.get_secret_value() if self.previous_secret_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    def secret_box(self) -> SecretBox:
        """Encrypts with ARCHIVER_SECRET_KEY; decrypts with it or ARCHIVER_PREVIOUS_SECRET_KEYS."""
        return SecretBox(self.master_key(), self.older_master_keys())


def check_database_url(value: str) -> str:
    """``value`` if it names a database we drive (SQLite or PostgreSQL) in a form SQLAlchemy
    parses; else a ValueError that says which part is wrong (never the password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if is_placeholder(value):
        raise ValueError("ARCHIVER_DATABASE_URL is still a template placeholder")
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "ARCHIVER_DATABASE_URL is not a database URL (expected sqlite:///path.db or "
            "postgresql://user:password@host:5432/name)"
        ) from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(
            f"ARCHIVER_DATABASE_URL names {backend!r}: titan-archiver runs on SQLite "
            "(sqlite:///path.db) or PostgreSQL (postgresql://...)"
        )
    return value


def known_names() -> set[str]:
    """Every ``ARCHIVER_*`` variable the product reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"ARCHIVER_{name.upper()}")
    return names


def unknown_names(environ: Mapping[str, str]) -> list[str]:
    """``ARCHIVER_*`` variables set in ``environ`` that no setting reads, each with the
    nearest real name when one is close: ``ARCHIVER_DATABSE_URL (did you mean
    ARCHIVER_DATABASE_URL?)``."""
    known = known_names()
    found = []
    for name in sorted(environ):
        if not name.startswith("ARCHIVER_") or name in known or name in _DEV_SIDE_NAMES:
            continue
        if name.startswith(_DEV_SIDE_PREFIX):
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        found.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return found


_reported: set[str] = set()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one readable ConfigError.

    ``ARCHIVER_*`` variables that no setting reads are reported once per process, on
    stderr (logging is not set up yet): a misspelt name must not be ignored silently.
    """
    unknown = unknown_names(os.environ)
    fresh = [n for n in unknown if n not in _reported]
    if fresh:
        _reported.update(fresh)
        print(
            f"titan-archiver: warning: unknown settings ignored: {', '.join(fresh)}",
            file=sys.stderr,
        )
    # Overrides name settings as the code reads them (``database_url``); the two required
    # URLs are stored under their variable's name.
    for name in ("database_url", "broker_url"):
        if name in overrides:
            overrides[f"ARCHIVER_{name.upper()}"] = overrides.pop(name)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc


def _problem(err: Any) -> str:
    """One validation error as the operator can act on it: the variable's name, the reason."""
    field = str(err["loc"][0]) if err["loc"] else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    if not field or message.startswith("ARCHIVER_"):
        return message
    name = field.removesuffix("_setting").upper()
    alias = Settings.model_fields.get(field)
    if alias is not None and isinstance(alias.validation_alias, str):
        return f"{alias.validation_alias}: {message}"
    return f"ARCHIVER_{name}: {message}"


def settings_for_process(role: str) -> Settings:
    """The settings of a long-running process (web, worker, beat, render), checked before it
    starts serving: a missing or malformed setting stops it at once with one line on stderr
    naming the problem and exit status 1, not a traceback, and never a fallback."""
    try:
        settings = load_settings()
        # Both are needed by every process role; read them now, not at the first request.
        settings.database_url  # noqa: B018
        settings.broker_url  # noqa: B018
    except ConfigError as exc:
        print(f"titan-archiver {role}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings
