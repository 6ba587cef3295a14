"""Child processes for the dev stack, the tests and the benchmarks: free ports, starting a
process in its own session with its output in a log file, waiting for it, stopping it (and
everything it started) with SIGTERM, then SIGKILL."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from archiver.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def http_up(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def wait_for_http(url: str, *, timeout: float = 30.0, process: Process | None = None) -> None:
    """Wait until ``url`` answers at all; ConfigError if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise ConfigError(
                f"{process.name} exited with status {process.proc.returncode} before {url} "
                f"answered; see {process.log_path}"
            )
        if http_up(url):
            return
        time.sleep(0.1)
    raise ConfigError(f"{url} did not come up within {timeout:.0f}s")


@dataclass
class Process:
    """A child process in its own session (so a signal reaches what it started too), with its
    output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process's whole group."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then SIGKILL the group."""
        try:
            self.proc.wait(max(0.1, timeout))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        _running.pop(self.proc.pid, None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.alive():
            self.send_signal(sig)
            self.wait_or_kill(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_process(
    name: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    cwd: Path | None = None,
) -> Process:
    """Start ``argv`` with ``env`` added to ours; output in ``log_dir`` (test-artifacts/);
    ``cwd``: where it runs (another checkout's modules come first there)."""
    directory = log_dir or ARTIFACTS
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    process = Process(name=name, proc=proc, log_path=log_path)
    _running[proc.pid] = process
    return process


# Every process start_process started and nobody has waited for yet, by pid: each runs in a
# session of its own, so a run that is itself stopped must stop them (stop_all).
_running: dict[int, Process] = {}


def started() -> set[int]:
    """The pids of the processes started here that nobody has waited for yet."""
    return set(_running)


def stop_all(timeout: float = 10.0) -> list[str]:
    """Stop every process started here that still runs, at once: SIGTERM to each one's
    group, one shared wait of ``timeout`` seconds, SIGKILL for what is left; the names
    stopped. For a test run told to stop (tests/stopping.py): stopping them one after
    another, as their owners' cleanup would, can take a Celery worker's 20 s each."""
    alive = [process for process in list(_running.values()) if process.alive()]
    for process in alive:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in alive:
        process.wait_or_kill(deadline - time.monotonic())
    _running.clear()
    return [process.name for process in alive]


def uvicorn_argv(target: str, port: int, *, log_level: str = "warning") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]


def procfile_command(process: str = "web") -> str:
    """The Procfile's command line for ``process``, as written."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise KeyError(f"no {process!r} line in the Procfile")


def procfile_web_argv(port: int, *, target: str | None = None) -> list[str]:
    """The Procfile's ``web`` line as argv, on 127.0.0.1:``port``, this Python's uvicorn;
    ``target``: serve another app factory with the very same flags (a benchmark's baseline)."""
    argv = shlex.split(procfile_command("web").replace("${PORT:-8000}", str(port)))
    assert argv[0] == "uvicorn", argv
    argv = [sys.executable, "-m", "uvicorn", *argv[1:]]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    if target is not None:
        argv[3] = target
    return argv


GRANIAN_WEB = (
    "granian --interface asgi --factory receiver.app:create_app --host 0.0.0.0 "
    "--port ${PORT:-8000} --workers 1 --runtime-mode st --no-ws"
)


def granian_web_argv(port: int, *, target: str | None = None) -> list[str]:
    """The alternative server line measured in docs/performance.md (granian, one worker
    process like the Procfile's uvicorn), on 127.0.0.1:``port``; ``target`` as above."""
    argv = shlex.split(GRANIAN_WEB.replace("${PORT:-8000}", str(port)))
    argv = [sys.executable, "-m", "granian", *argv[1:]]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    if target is not None:
        argv[argv.index("--factory") + 1] = target
    return argv


def worker_argv(
    concurrency: int = 2, *, isolated: bool = True, beat: Path | None = None
) -> list[str]:
    """A Celery worker of worker.celery_app; ``isolated``: no gossip, mingle or heartbeat
    with other workers (each test's worker minds only its own broker); ``beat``: also run
    the periodic tasks (retries due, the sweeper), keeping beat's schedule in that file."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
    ]
    if isolated:
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat is not None:
        argv += ["--beat", "--schedule", str(beat)]
    return argv


def chromium() -> str | None:
    """A headless-capable Chromium on this machine (Debian's package), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None
