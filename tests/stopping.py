"""A test run told to stop (SIGTERM, SIGHUP) stops the processes its tests started first.

The receivers, workers and servers the tests start run in sessions of their own, so a
signal to the run does not reach them, and a run killed by its default SIGTERM left them
all running. A stopped run stops them first, all at once, then ends as Ctrl-C ends it.
The controlling process of a parallel run passes the signal on to its test processes and
waits for them to do the same.

tests/conftest.py takes its hooks; a pytest run can take it alone (``-p tests.stopping``), as
tests/test_stopped_run.py does.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from devstack import processes


def _children_of(parents: set[int]) -> list[int]:
    """The pids of the live processes whose parent is one of ``parents``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) in parents and fields[0] != "Z":
            found.append(int(entry.name))
    return found


STOPPED_BY: list[str] = []  # the signal that stopped the run, once one has


def _stop_the_run(signum: int, _frame: object) -> None:
    # Told again meanwhile (a signal to the whole process group reaches a test process
    # both directly and through its controller): the stop under way goes on.
    signal.signal(signum, signal.SIG_IGN)
    # xdist's test processes (this process's children that start_process did not start):
    # each stops what it started. They are waited for until nothing they started is left,
    # not until they exit, which they do only when this process tells them to.
    workers = set(_children_of({os.getpid()})) - processes.started()
    for pid in workers:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + 30  # a test process's own stop_all takes up to 10 s
    while workers and _children_of(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = processes.stop_all()
    STOPPED_BY.append(signal.Signals(signum).name)
    print(
        f"\n{signal.Signals(signum).name}: stopped {len(stopped)} started processes"
        + (f" ({', '.join(sorted(set(stopped)))})" if stopped else ""),
        file=sys.stderr,
        flush=True,
    )
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:  # nobody else handles it
            signal.signal(signum, _stop_the_run)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # The KeyboardInterrupt can land where a library takes it for its own (a wait that
    # kills its child on Ctrl-C and goes on): no test starts once the run was stopped.
    if STOPPED_BY:
        pytest.exit(f"stopped by {STOPPED_BY[0]}", returncode=128 + signal.Signals[STOPPED_BY[0]])
