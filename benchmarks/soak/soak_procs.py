"""The processes of ``soak.py``: the expected matrix, the fillers (fault injection), the reader.

Run as a child process by ``soak.py``::

    python benchmarks/soak/soak_procs.py fill STORE OPTS_JSON
    python benchmarks/soak/soak_procs.py read STORE OPTS_JSON

- A filler waits for the ``go`` file, computes the blocks in its own random order (``seed``),
  then calls ``fill()``. With ``inject``, it kills itself (SIGKILL) while writing its ``nth``
  block file: ``mid-write`` after writing half the bytes, ``before-rename`` after writing all
  of them but before the rename that publishes the block.
- The reader touches ``go``, then reads random slices through ``ia.open`` (each must be correct
  or raise ``MissingBlockError``) and whole raw blocks through plain zarr (each must be all NaN
  or exactly correct) until a while after the ``stop`` file appears; the blocks it saw complete
  before the ``killed`` file appeared are listed, and its counts go to stdout as JSON.

The matrix (:func:`values`) is a fixed function of the indices, so every process
knows the expected values of every block.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

SHAPE = (48, 60)
TIMEOUT_S = 120.0


def values(rows: range, cols: range) -> np.ndarray:
    i = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
    return np.sin(0.37 * i + 0.11 * j) * (1.0 + i) + 1e-3 * j


def expected() -> np.ndarray:
    return values(range(SHAPE[0]), range(SHAPE[1])).astype(np.float32)


def grid_of(block: tuple[int, int]) -> tuple[int, int]:
    return (-(-SHAPE[0] // block[0]), -(-SHAPE[1] // block[1]))


def block_sel(coords: tuple[int, int], block: tuple[int, int]) -> tuple[slice, slice]:
    (i, j), (br, bc) = coords, block
    return slice(i * br, min((i + 1) * br, SHAPE[0])), slice(j * bc, min((j + 1) * bc, SHAPE[1]))


class SlowFn:
    """The block function of the fillers: ``values`` after a short sleep."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        time.sleep(self.delay)
        return values(rows, cols)


# ---------------------------------------------------------------------- filler
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def is_block_tmp(path: Path) -> bool:
    """Whether ``path`` is the temporary file zarr writes a block to before renaming it."""
    return path.name.endswith(".partial") and "/c/" in path.as_posix()


class HalfWriter:
    """A file whose first ``write`` writes half the bytes, flushes, and kills the process."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: Any) -> int:
        raw = bytes(memoryview(data))
        self.f.write(raw[: len(raw) // 2])
        self.f.flush()
        die()
        return 0


def inject(mode: str, nth: int) -> None:
    """Make this process kill itself while writing its ``nth`` block file (see the docstring)."""
    count = [0]
    if mode == "mid-write":
        real_open = pathlib.Path.open

        def patched_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(self, mode, *args, **kwargs)
            if "w" in mode and is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    return HalfWriter(f)
            return f

        pathlib.Path.open = patched_open  # type: ignore[method-assign]
    elif mode == "before-rename":
        real_replace = pathlib.Path.replace

        def patched_replace(self: Path, target: Any) -> Any:
            if is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    die()
            return real_replace(self, target)

        pathlib.Path.replace = patched_replace  # type: ignore[method-assign]


def wait_for(path: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {path}")
        time.sleep(0.001)


def child_fill(store: str, opts: dict[str, Any]) -> None:
    import infl_array as ia

    if opts.get("inject"):
        inject(opts["inject"], opts["nth"])
    wait_for(opts["go"])
    arr = ia.open(store, fn=SlowFn(opts["delay"]))
    grid = arr.grid_shape
    blocks = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    random.Random(opts["seed"]).shuffle(blocks)
    for b in blocks:
        arr.read_block(b)
    arr.fill(progress=False)


# ---------------------------------------------------------------------- reader
class Reader:
    """The reader's state: counts, wrong values, errors, blocks seen complete before the kill."""

    def __init__(self, store: str, opts: dict[str, Any]) -> None:
        import zarr

        import infl_array as ia

        self.full = expected()
        self.block = (int(opts["block"][0]), int(opts["block"][1]))
        self.grid = grid_of(self.block)
        self.arr = ia.open(store)
        self.raw = zarr.open_array(os.path.join(store, "influence"), mode="r")
        self.rng = random.Random(opts["seed"])
        self.stats: dict[str, Any] = {"ok": 0, "missing": 0, "raw_complete": 0, "raw_empty": 0}
        self.wrong: list[Any] = []
        self.errors: list[str] = []
        self.seen: set[tuple[int, int]] = set()

    def read_slice(self) -> None:
        """A random slice of up to 2 x 2 blocks: correct, or ``MissingBlockError``."""
        import infl_array as ia

        rng, block = self.rng, self.block
        r0 = rng.randrange(SHAPE[0])
        r1 = rng.randrange(r0 + 1, min(SHAPE[0], r0 + 2 * block[0]) + 1)
        c0 = rng.randrange(SHAPE[1])
        c1 = rng.randrange(c0 + 1, min(SHAPE[1], c0 + 2 * block[1]) + 1)
        try:
            got = self.arr[r0:r1, c0:c1]
        except ia.MissingBlockError:
            self.stats["missing"] += 1
        except Exception as exc:
            self.errors.append(repr(exc))
        else:
            if np.array_equal(got, self.full[r0:r1, c0:c1]):
                self.stats["ok"] += 1
            else:
                self.wrong.append(["slice", r0, r1, c0, c1])

    def read_raw_block(self, before_kill: bool) -> None:
        """A random whole block through plain zarr: all NaN, or exactly correct."""
        coords = (self.rng.randrange(self.grid[0]), self.rng.randrange(self.grid[1]))
        sel = block_sel(coords, self.block)
        try:
            values_read = self.raw[sel]
        except Exception as exc:
            self.errors.append(f"raw zarr {coords}: {exc!r}")
            return
        if np.isnan(values_read).all():
            self.stats["raw_empty"] += 1
        elif np.array_equal(values_read, self.full[sel]):
            self.stats["raw_complete"] += 1
            if before_kill:
                self.seen.add(coords)
        else:
            self.wrong.append(["raw", *coords])

    def result(self) -> dict[str, Any]:
        return self.stats | {"wrong": self.wrong, "errors": self.errors, "seen": sorted(self.seen)}


def child_read(store: str, opts: dict[str, Any]) -> None:
    reader = Reader(store, opts)
    pathlib.Path(opts["go"]).touch()
    stop, killed = pathlib.Path(opts["stop"]), pathlib.Path(opts["killed"])
    deadline = time.monotonic() + TIMEOUT_S * 2
    after_stop = 0
    while time.monotonic() < deadline and after_stop < 10:
        after_stop += stop.exists()
        # blocks seen before the fillers were killed must survive the kill
        before_kill = not killed.exists()
        reader.read_slice()
        reader.read_raw_block(before_kill)
    print(json.dumps(reader.result()))


if __name__ == "__main__":
    cmd, store_arg, opts_arg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    {"fill": child_fill, "read": child_read}[cmd](store_arg, opts_arg)
