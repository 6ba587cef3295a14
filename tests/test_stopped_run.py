"""A test run told to stop (SIGTERM) stops the processes its tests started first.

They run in sessions of their own (devstack/processes.py), so the signal does not reach
them; before tests/stopping.py's handler, a run killed this way left its receivers,
workers and servers running. Here a run of one test that starts a process is stopped,
serially and in parallel (the signal to xdist's controlling process only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import ROOT

INNER = """
import os
import time
from pathlib import Path

from devstack import processes


def test_starts_a_process_and_waits(tmp_path: Path) -> None:
    started = processes.start_process("sleeper", ["sleep", "300"], log_dir=tmp_path)
    Path(os.environ["STARTED_PID_FILE"]).write_text(str(started.proc.pid))
    time.sleep(300)
"""


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_stopped_run_stops_what_its_tests_started(tmp_path: Path, workers: str) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "sleeper.pid"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.stopping",
            "-p",
            "no:cacheprovider",
            "-q",
            "-s",  # the handler's line to the terminal, not into a test's capture
            "-n",
            workers,
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_inner.py"),
        ],
        cwd=ROOT,
        env={**os.environ, "STARTED_PID_FILE": str(pid_file), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180  # a loaded machine takes its time to start pytest
        while not pid_file.exists() or not pid_file.read_text():
            assert run.poll() is None, run.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the inner test did not start its process"
            time.sleep(0.1)
        sleeper = int(pid_file.read_text())
        assert running(sleeper)
        run.send_signal(signal.SIGTERM)  # to pytest alone: not its group, not the sleeper
        output = run.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, output
    assert not running(sleeper), output
    if workers == "0":  # a test process's own stderr reaches the terminal only when serial
        assert "SIGTERM: stopped 1 started processes (sleeper)" in output
