"""One memory budget for the upload buffers of every transfer a worker runs.

``ARCHIVER_WORKER_BUFFER_BYTES`` bounds the bytes held in part buffers (the one being
filled and those going up) across all the pool processes of one ``celery worker``: a part
waits for budget instead of each transfer keeping its own ``parts in flight + 1`` parts, so
four 200 MB videos at once cost the budget, not four times it, and a lone transfer may use
all of it.

The budget lives in shared memory created by the worker's main process before its pool
forks (``install``); every pool child inherits it. What a process holds is kept in a slot
under its pid, so a pool child killed mid-transfer (SIGKILL, the OOM killer) gives its
bytes back: waiters reclaim the slots of dead processes. A process that did not inherit
one (the solo pool, a script, a test) builds its own on first use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
from typing import Any

log = logging.getLogger(__name__)

SLOTS = 256  # processes that may hold buffers at once (a pool is far smaller)
MMAP_THRESHOLD = 1024 * 1024  # glibc: blocks this large get their own mapping (see below)
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_RECHECK_SECONDS = 0.25  # a waiter looks for dead holders this often


class BufferBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a buffer budget needs a positive size")
        self.total = total
        context = multiprocessing.get_context("fork")
        self._changed = context.Condition(context.Lock())
        # Pairs (pid, bytes held) in shared memory; pid 0 marks a free slot.
        self._slots: Any = context.RawArray("q", 2 * SLOTS)

    def held(self) -> int:
        """Bytes held across all processes now."""
        with self._changed:
            return self._in_use(reclaim=False)

    def acquire(self, size: int) -> int:
        """Wait until ``size`` bytes fit, take them, and return what was taken: ``size``,
        or the whole budget for a request larger than it (it then waits for all of it)."""
        take = min(max(size, 0), self.total)
        if take == 0:
            return 0
        with self._changed:
            reclaim = False
            while self._in_use(reclaim=reclaim) + take > self.total:
                self._changed.wait(_RECHECK_SECONDS)
                reclaim = True
            self._add(os.getpid(), take)
        return take

    def release(self, size: int) -> None:
        if size <= 0:
            return
        with self._changed:
            self._add(os.getpid(), -size)
            self._changed.notify_all()

    def _in_use(self, *, reclaim: bool) -> int:
        slots = self._slots
        used = 0
        for i in range(0, 2 * SLOTS, 2):
            pid = slots[i]
            if pid == 0:
                continue
            if reclaim and pid != os.getpid() and not _alive(pid):
                log.warning("reclaimed %d buffer bytes of exited process %d", slots[i + 1], pid)
                slots[i] = slots[i + 1] = 0
                continue
            used += slots[i + 1]
        return used

    def _add(self, pid: int, delta: int) -> None:
        slots = self._slots
        free = -1
        for i in range(0, 2 * SLOTS, 2):
            if slots[i] == pid:
                slots[i + 1] += delta
                if slots[i + 1] <= 0:
                    slots[i] = slots[i + 1] = 0
                return
            if slots[i] == 0 and free < 0:
                free = i
        if delta <= 0:
            return
        if free < 0:
            raise RuntimeError(f"more than {SLOTS} processes share one buffer budget")
        slots[free], slots[free + 1] = pid, delta


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that exited but was not reaped yet holds nothing either.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


_installed: BufferBudget | None = None


def install(total: int) -> BufferBudget:
    """Create this worker's budget (in the main process, before the pool forks)."""
    global _installed
    _installed = BufferBudget(total)
    return_freed_buffers()
    return _installed


def return_freed_buffers() -> bool:
    """Make glibc give a freed part buffer back to the kernel at once (True if it did).

    By default glibc raises its mmap threshold to the size of the largest mapped block freed
    so far: after the first part, every later part buffer comes from the heap, and the heap
    keeps what it was given, so a worker's RSS stayed at its busiest moment's, not at what
    its budget holds (bench/worker_memory.py). Setting the threshold fixes it (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``, the ``MALLOC_MMAP_THRESHOLD_`` variable's switch): blocks
    of a MiB or more are mapped on their own and unmapped when freed. Other C libraries (musl
    already maps large blocks) are left alone. Inherited by the pool's children."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def budget(total: int) -> BufferBudget:
    """The installed budget, or one of ``total`` bytes for this process alone."""
    return _installed if _installed is not None else install(total)
