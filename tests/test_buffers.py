"""The worker's shared upload-buffer budget (worker/buffers.py): plain processes, no S3."""

from __future__ import annotations

import multiprocessing
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from worker.buffers import BufferBudget

MiB = 1024 * 1024
fork = multiprocessing.get_context("fork")


def test_takes_what_fits_and_waits_for_the_rest() -> None:
    budget = BufferBudget(10 * MiB)
    assert budget.acquire(6 * MiB) == 6 * MiB
    assert budget.acquire(4 * MiB) == 4 * MiB and budget.held() == 10 * MiB
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(3 * MiB)))
    waiter.start()
    time.sleep(0.3)
    assert got == []  # nothing left: it waits
    budget.release(4 * MiB)
    waiter.join(5)
    assert got == [3 * MiB] and budget.held() == 9 * MiB
    budget.release(6 * MiB)
    budget.release(3 * MiB)
    assert budget.held() == 0


def test_a_request_larger_than_the_budget_takes_all_of_it() -> None:
    budget = BufferBudget(5 * MiB)
    taken = budget.acquire(8 * MiB)
    assert taken == 5 * MiB and budget.held() == 5 * MiB
    budget.release(taken)
    assert budget.held() == 0
    assert budget.acquire(0) == 0 and budget.held() == 0


def test_pool_processes_forked_after_it_share_one_budget() -> None:
    budget = BufferBudget(10 * MiB)
    holding, release = fork.Event(), fork.Event()

    def child() -> None:
        budget.acquire(8 * MiB)
        holding.set()
        release.wait(10)
        budget.release(8 * MiB)

    process = fork.Process(target=child)
    process.start()
    try:
        assert holding.wait(10)
        assert budget.held() == 8 * MiB  # the child's bytes count here
        started = time.monotonic()
        threading.Timer(0.4, release.set).start()
        budget.acquire(5 * MiB)  # waits until the child gives its part back
        assert time.monotonic() - started >= 0.35
        assert budget.held() == 5 * MiB
        budget.release(5 * MiB)
    finally:
        release.set()
        process.join(10)


def test_a_killed_process_gives_its_bytes_back() -> None:
    budget = BufferBudget(10 * MiB)
    holding = fork.Event()

    def child() -> None:
        budget.acquire(9 * MiB)
        holding.set()
        time.sleep(60)

    process = fork.Process(target=child)
    process.start()
    assert holding.wait(10)
    process.kill()  # mid-transfer, no release: SIGKILL, the OOM killer
    process.join(10)
    assert budget.held() == 9 * MiB
    budget.acquire(6 * MiB)  # reclaimed from the dead process, not waited for forever
    assert budget.held() == 6 * MiB
    budget.release(6 * MiB)


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BufferBudget(0)


_FREED_PARTS = """
import os, sys
from worker.buffers import return_freed_buffers
if sys.argv[1] == "fixed":
    assert return_freed_buffers()
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
part = 8 << 20
first = bytearray(part)  # a transfer's first part, freed once it is up
del first
base = rss()
kept = []
for _ in range(3):  # later parts, with small allocations between them (as in a transfer)
    buffer = bytearray(part)
    kept.append(bytearray(64 * 1024))
    del buffer
print(rss() - base)
"""


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc",
    reason="glibc on Linux: the allocator whose threshold moves",
)
def test_a_freed_part_buffer_goes_back_to_the_kernel() -> None:
    def grown(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _FREED_PARTS, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout)

    # glibc's own moving threshold keeps a freed part in the heap; the worker's does not.
    assert grown("default") >= 4 * MiB
    assert grown("fixed") < 1 * MiB
