"""Freed memory goes back to the operating system, so the budget's account bounds the process.

A :class:`~infl_array.engine.budget.Budget` accounts what the parts hold; the process's resident
memory follows that account only if what they free leaves the process. With glibc's malloc
(Linux) it does not by default:

1. A request of at least the *mmap threshold* gets its own mapping, unmapped when freed; smaller
   ones come from heaps (*arenas*: one per thread that allocates, up to eight per core), and a
   freed piece stays resident there, for that arena's later requests.
2. The threshold is dynamic: it starts at 128 KiB, and every freed mapping raises it to that
   mapping's size, up to 32 MiB.
3. A fill frees tensors of tens of MiB as it goes (per-layer gradients, factor blocks), so
   after the first ones every tensor under 32 MiB comes from a heap, in one of three threads
   (the caller's, the flush-to-zero helper's of
   :mod:`~infl_array.torch.layerwise.subnormal`, the block writer's); what one thread freed
   is kept in its arena, for the requests of the threads that arena serves.

On the 1e6-parameter ladder CNN (``EkfacInfluence``, ``memory_budget`` 1 GiB, ``create`` and
``fill``) about 400 MiB of the process's peak were freed pieces kept in the heaps (glibc's
``mallinfo2``); held at 1 MiB, a few MiB, and no more CPU time within the noise of a shared
machine. The peaks before and after are in benchmarks/RESULTS.md, "Memory budget (issue 21)"
(``benchmarks/large/bench_memory.py``).

The threshold has a cost where a model's passes allocate many tensors of 1-32 MiB: each one
is then a fresh mapping, faulted in page by page (system time). On the language-model benchmark
(benchmarks/RESULTS.md, "Language models", row ``projected_mmap32``) ours'
``ProjectedInfluence`` fit + matrix took 84 s at 1 MiB and 46 s with the threshold at 32 MiB;
a user who prefers speed to the bound sets ``MALLOC_MMAP_THRESHOLD_`` (respected, see below).

:func:`hold_mmap_threshold` sets the threshold once, for the process, to :data:`MMAP_THRESHOLD`
(setting it also stops its adjustment), so pieces of 1 MiB or more go back to the system when
freed. It is called when a budget is made. It leaves a threshold the user chose alone (the
``MALLOC_MMAP_THRESHOLD_`` variable, or ``glibc.malloc.mmap_threshold`` in
``GLIBC_TUNABLES``), and does nothing without glibc (other C libraries are left as they
are).

This module imports neither numpy nor torch.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "hold_mmap_threshold"]

MMAP_THRESHOLD = 1 << 20
"""Bytes from which glibc serves a request with its own mapping once a budget is made."""

_M_MMAP_THRESHOLD = -3  # mallopt's parameter (glibc's malloc.h)

_lock = threading.Lock()
_done: list[bool] = []  # [whether the threshold is held] once tried


def _user_chose() -> bool:
    """Whether the environment sets glibc's mmap threshold."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in tunables


def hold_mmap_threshold() -> bool:
    """Hold glibc's mmap threshold at :data:`MMAP_THRESHOLD` (see the module docstring).

    Done once per process; returns whether the threshold is held by this module (False
    without glibc, or where the environment chose a threshold).
    """
    with _lock:
        if not _done:
            _done.append(_set())
        return _done[0]


def _set() -> bool:
    if not sys.platform.startswith("linux") or _user_chose():
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (AttributeError, OSError, ValueError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
