"""Tests of infl_array.engine.allocator: memory a budgeted process frees leaves it (issue 21).

Each check runs in a fresh interpreter: glibc's mmap threshold is process-wide, and a process's
peak resident memory (``ru_maxrss``) only grows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Frees a 24 MiB mapping (glibc then raises its mmap threshold to 24 MiB, unless it is held),
# then allocates 8 MiB: from a heap (not a mapping) when the threshold moved.
CHILD = """
import ctypes, json, sys
import numpy as np
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "budget":
    from infl_array.engine.budget import Budget
    Budget(1 << 30)
big = np.ones(24 << 20, dtype=np.uint8)
del big
before = libc.mallinfo2().hblkhd
block = np.ones(8 << 20, dtype=np.uint8)
print(json.dumps({"mapped": libc.mallinfo2().hblkhd - before}))
"""


def _mapped(mode: str, **env: str) -> int:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=environ, check=True
    )
    return int(json.loads(done.stdout)["mapped"])


def test_a_budget_makes_freed_blocks_leave_the_process() -> None:
    assert _mapped("plain") == 0  # glibc's default: the 8 MiB come from a heap, kept when freed
    assert _mapped("budget") >= 8 << 20  # with a budget: their own mapping, returned when freed


def test_a_threshold_the_user_chose_is_left_alone() -> None:
    held_at_32_mib = "glibc.malloc.mmap_threshold=33554432"
    assert _mapped("budget", GLIBC_TUNABLES=held_at_32_mib) == 0
