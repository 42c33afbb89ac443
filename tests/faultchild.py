"""Child program of the fault-injection tests: fills or reads a store, maybe killing itself.

Run as ``python -c "import faultchild; faultchild.main()" CMD STORE OPTS`` with this folder on
``PYTHONPATH`` (so that spawned worker processes can import its block function too): ``CMD`` is
``fill`` or ``read``, ``STORE`` a path or ``file://`` URL, ``OPTS`` a JSON object.

* ``fill``: fills the store with :class:`SlowFn`; with ``inject`` (``"mid-write"`` or
  ``"before-rename"``) and ``nth`` it kills itself with SIGKILL while writing the ``nth`` block
  file: half its bytes written, or all written but the file not yet renamed into place. Prints
  ``{"computed": n}``.
* ``read``: reads random slices and raw blocks until told to stop and prints what it saw.

The matrix (:data:`SHAPE`, :data:`BLOCK`, :func:`values`) is shared with the tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import sys
import time
from typing import Any

import numpy as np

SHAPE = (40, 36)
BLOCK = (5, 6)
GRID = (8, 6)


def values(rows: range, cols: range) -> np.ndarray:
    i = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
    return np.sin(0.37 * i + 0.11 * j) * (1.0 + i) + 1e-3 * j


def expected() -> np.ndarray:
    return values(range(SHAPE[0]), range(SHAPE[1])).astype(np.float32)


class SlowFn:
    """The block function: ``values`` after a short sleep (picklable for workers)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        time.sleep(self.delay)
        return values(rows, cols)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _is_block_tmp(path: pathlib.Path) -> bool:
    return path.name.endswith(".partial") and "/c/" in path.as_posix()


def inject(mode: str, nth: int) -> None:
    """Kill this process while writing the nth block file (see the module docstring)."""
    count = [0]
    if mode == "mid-write":
        real_open = pathlib.Path.open

        class HalfWriter:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()
                return False

            def write(self, data):
                data = bytes(memoryview(data))
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                _die()

        def patched_open(self, mode="r", *args, **kwargs):
            f = real_open(self, mode, *args, **kwargs)
            if "w" in mode and _is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    return HalfWriter(f)
            return f

        pathlib.Path.open = patched_open
    elif mode == "before-rename":
        real_replace = pathlib.Path.replace

        def patched_replace(self, target):
            if _is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    _die()
            return real_replace(self, target)

        pathlib.Path.replace = patched_replace
    else:
        raise ValueError(mode)


def _wait_for(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pathlib.Path(path).exists():
        if time.monotonic() > deadline:
            sys.exit("gave up waiting for " + path)
        time.sleep(0.001)


def fill(store: str, opts: dict[str, Any]) -> None:
    import infl_array as ia

    if opts.get("inject"):
        inject(opts["inject"], opts["nth"])
    if opts.get("go"):
        _wait_for(opts["go"])
    arr = ia.open(store, fn=SlowFn(opts["delay"]))
    if opts.get("shuffle") is not None:
        blocks = [(i, j) for i in range(GRID[0]) for j in range(GRID[1])]
        random.Random(opts["shuffle"]).shuffle(blocks)
        for b in blocks[: len(blocks) // 2]:
            arr.read_block(b)
    arr.fill(progress=False, workers=opts.get("workers"))
    print(json.dumps({"computed": arr.stats.blocks_computed}))


def read(store: str, opts: dict[str, Any]) -> None:
    """Read random slices and whole raw blocks until told to stop; report what was seen."""
    import zarr

    import infl_array as ia

    full = expected()
    arr = ia.open(store)
    root = store[len("file://") :] if store.startswith("file://") else store
    raw = zarr.open_array(os.path.join(root, "influence"), mode="r")
    rng = random.Random(opts["seed"])
    stats = {"ok": 0, "missing": 0, "raw_complete": 0, "raw_empty": 0, "wrong": [], "errors": []}
    pathlib.Path(opts["go"]).touch()
    stop = pathlib.Path(opts["stop"])
    deadline = time.monotonic() + opts["timeout"]
    after_stop = 0
    while time.monotonic() < deadline and after_stop < 30:
        after_stop += stop.exists()
        r0 = rng.randrange(SHAPE[0])
        r1 = rng.randrange(r0 + 1, min(SHAPE[0], r0 + 9) + 1)
        c0 = rng.randrange(SHAPE[1])
        c1 = rng.randrange(c0 + 1, min(SHAPE[1], c0 + 10) + 1)
        try:
            got = arr[r0:r1, c0:c1]
        except ia.MissingBlockError:
            stats["missing"] += 1
        except Exception as exc:
            stats["errors"].append(repr(exc))
        else:
            if np.array_equal(got, full[r0:r1, c0:c1]):
                stats["ok"] += 1
            else:
                stats["wrong"].append([r0, r1, c0, c1])
        i, j = rng.randrange(GRID[0]), rng.randrange(GRID[1])
        sel = (slice(i * BLOCK[0], (i + 1) * BLOCK[0]), slice(j * BLOCK[1], (j + 1) * BLOCK[1]))
        try:
            block = raw[sel]
        except Exception as exc:
            stats["errors"].append("raw zarr: " + repr(exc))
            continue
        if np.isnan(block).all():
            stats["raw_empty"] += 1
        elif np.array_equal(block, full[sel]):
            stats["raw_complete"] += 1
        else:
            stats["wrong"].append(["raw", i, j])
    print(json.dumps(stats))


def main() -> None:
    cmd, store, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    {"fill": fill, "read": read}[cmd](store, opts)
