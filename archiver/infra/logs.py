"""Logging for every process: one line per event (JSON in production), secrets redacted.

Every field passed as ``extra={...}`` becomes a JSON key (ours: tenant, session, mediaId,
eventId, outcome, durationMs, bytes, attempt, admin, keyId, ...; a library's too), except
names starting with ``_``. The finished line is redacted as a whole, so a key or signature
that slips into a message, an extra field or an exception is masked before it is written.
uvicorn's own loggers (``uvicorn.error``, ``uvicorn.access``) are routed through the same
handler. The Procfile turns uvicorn's access log off: the receiver writes its own line per
request (``receiver.access``: ``client``, ``method``, ``path``, ``status``, ``durationMs``;
a webhook's line is its outcome line), and uvicorn's, where an operator keeps it on, is JSON
with the same fields.
With tracing on (archiver/tracing.py), a line written inside a span carries its
``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from archiver.infra import tracing

_SECRETS = [
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?bearer\s+)[^\s\"',]+"), r"\1[redacted]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer [redacted]"),
    (re.compile(r"\btak_[A-Za-z0-9_-]{8,}"), "tak_[redacted]"),
    (re.compile(r"\btitan_(?:ct_)?[A-Za-z0-9_-]{8,}"), "titan_[redacted]"),
    (re.compile(r"sha256=[0-9a-fA-F]{16,}"), "sha256=[redacted]"),
    (
        re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+"),
        r"\1[redacted]",
    ),
    (
        re.compile(
            r"(?i)((?:secret|password|hmac|api)[_-]?(?:access[_-]?)?key[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"',}]+"
        ),
        r"\1[redacted]",
    ),
]


# Every pattern above needs one of these words; most lines have none and skip the rest.
# (Substring tests on the lowered line: a case-blind regex alternation took 14 us a line.)
_TRIGGERS = ("bearer", "tak_", "titan_", "sha256=", "x-amz-", "key")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


# The request (receiver: X-Request-ID, or one made up) or task (worker: Celery's task id)
# being served; every log line written meanwhile carries it as ``request_id``.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RedactingFilter(logging.Filter):
    """Tags the record with the current request id and redacts what a formatter would write
    unredacted: exceptions, access-line fields, and (``message``, for plain-text output) the
    message. The JSON formatter redacts its whole line itself."""

    def __init__(self, *, message: bool = True) -> None:
        super().__init__()
        self._message = message

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        if isinstance(record.args, tuple) and record.name == "uvicorn.access":
            # Keep the access line's fields (client, method, path, ...), each redacted.
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if self._message:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# The attributes every LogRecord has: whatever else a record carries came as ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}


# This process's id for ``event``'s lines, kept (os.getpid is a system call each time) and
# renewed in a forked child (Celery's pool).
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)

_second: tuple[int, str] = (-1, "")  # the last whole second written, as ISO 8601 up to it


def _timestamp(created: float) -> str:
    """``created`` in ISO 8601 UTC to the millisecond; the part up to the second is made
    once a second (a datetime per line was a tenth of a line's cost)."""
    global _second
    whole = int(created)
    micros = round((created - whole) * 1_000_000)  # rounded as datetime.fromtimestamp does
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micros // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            doc |= {"client": client, "method": method, "path": path, "status": status}
        ids = tracing.log_ids()  # None unless tracing is on and a span is open
        if ids is not None:
            doc["trace_id"], doc["span_id"] = ids
        fields = record.__dict__
        _add_fields(doc, fields, fields.keys() - _STANDARD)
        if record.exc_text:
            doc["error"] = record.exc_text
        elif record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return redact(_dumps(doc))


def _add_fields(doc: dict[str, Any], fields: dict[str, Any], names: Iterable[str]) -> None:
    """The extra fields, by name, after the line's own (which they never replace); None
    and names starting with ``_`` left out."""
    for name in sorted(names):
        value = fields[name]
        if value is not None and not name.startswith("_"):
            doc.setdefault(name, value)


def _dumps(doc: dict[str, Any]) -> str:
    """The line's JSON: orjson (a tenth of json.dumps's time), anything it does not know
    written as str() like json.dumps(default=str) did; json.dumps for what orjson refuses
    (an integer wider than 64 bits)."""
    try:
        return orjson.dumps(doc, default=str, option=_ORJSON).decode()
    except TypeError:
        return json.dumps(doc, default=str, ensure_ascii=False)


_ORJSON = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS
)


class _Handler(logging.StreamHandler[TextIO]):
    """Ours: configure_logging installs it once per process.

    On a thread that runs an asyncio loop (the receiver's), the lines written during one
    turn of the loop go out together at the end of that turn: one write to the stream
    instead of one per line (the stream is line-buffered, so each line was a system call
    on the webhook's path; docs/performance.md). Nothing waits longer than the turn
    that wrote it; ``flush`` (called at exit by ``logging.shutdown``) writes what is left.
    Elsewhere (the workers, threads, the CLI) each line is written as it comes."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush waits on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._hold(line, loop)

    def _hold(self, line: str, loop: asyncio.AbstractEventLoop) -> None:
        """``line`` goes out at the end of this turn of ``loop``. The caller holds the
        lock (Handler.handle does around emit). A flush waiting on another loop (one that
        may have stopped) is not relied upon."""
        if self._flush_on is not loop:
            loop.call_soon(self.flush)
            self._flush_on = loop
        self._pending.append(line + self.terminator)

    def write_line(self, line: str) -> None:
        """A line formatted elsewhere (``event``), written as ``emit`` writes a record's."""
        self.acquire()
        try:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write(line + self.terminator)
                    self.stream.flush()
                return
            self._hold(line, loop)
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if self._pending:
                lines, self._pending = "".join(self._pending), []
                with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
                    self.stream.write(lines)
            super().flush()
        finally:
            self.release()


# The JSON handler configure_logging installed (None with text lines, or before it ran).
_json_handler: _Handler | None = None


def _only_ours(logger: logging.Logger, level: int) -> _Handler | None:
    """The JSON handler, when it is the one place a line of ``logger`` at ``level`` would
    go through and no filter but ours would see it; else None."""
    handler = _json_handler
    if handler is None or level < handler.level or len(handler.filters) != 1:
        return None  # (the one filter: its RedactingFilter, which ``event`` does itself)
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.handlers:
            alone = current.parent is None and current.handlers == [handler]
            return handler if alone else None
        if not current.propagate:
            return None
        current = current.parent
    return None


def event(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra=fields)``, the same line for a fraction of the cost
    when it goes only to our JSON handler: built straight from the fields, without a
    LogRecord, the handler chain and the formatter's walk over the record (the webhook's
    outcome line was a sixth of the receiver's CPU that way; docs/performance.md).
    Anything else (text lines, another handler or filter somewhere) takes logging's way."""
    if not logger.isEnabledFor(level):
        return
    handler = _only_ours(logger, level)
    if handler is None:
        logger.log(level, msg, extra=fields)
        return
    doc: dict[str, Any] = {
        "ts": _timestamp(time.time()),
        "level": logging.getLevelName(level).lower(),
        "logger": logger.name,
        "pid": _pid,
        "msg": msg,
    }
    ids = tracing.log_ids()
    if ids is not None:
        doc["trace_id"], doc["span_id"] = ids
    current = request_id.get()
    if current is not None and "request_id" not in fields:
        fields = {**fields, "request_id": current}
    _add_fields(doc, fields, fields)
    handler.write_line(redact(_dumps(doc)))


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    root = logging.getLogger()
    # uvicorn configured its loggers before it loaded our app: send their lines through the
    # same handler (JSON, redacted), not uvicorn's plain-text ones. A logger uvicorn left
    # without a handler and not propagating was turned off (--no-access-log): it stays off.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_log = logging.getLogger(name)
        if server_log.handlers:
            server_log.handlers.clear()
            server_log.propagate = True
    if any(isinstance(h, _Handler) for h in root.handlers):
        return
    global _json_handler
    handler = _Handler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        _json_handler = handler
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s")
        )
    handler.addFilter(RedactingFilter(message=fmt != "json"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No line of ours names its source file or line: skip the caller's frame walk that
    # every record otherwise makes (the logging HOWTO's "Optimization" switch).
    logging._srcfile = None
    # httpx logs every request URL at INFO; keep our own lines readable.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
