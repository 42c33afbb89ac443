"""What every fault kind of the soak shares: the reference matrix, bounded steps, checks, tallies.

- :func:`values` is the matrix of every ``from_function`` store of the soak, a fixed function of
  the indices, so every process knows the expected value of every block.
- :func:`bounded` runs one step in a thread with a time bound: a step that does not return in
  time is a hang (counted, never waited on again).
- :func:`check_blocks` reads every block of a store with plain zarr and compares each stored
  one with the reference: what is stored must decode and be exactly right.
- :class:`Tally` counts, per fault kind, what the soak reports.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STEP_S = 60.0
"""Most seconds one step may take before it counts as a hang (each takes well under 1 s)."""


def values(rows: range, cols: range) -> np.ndarray:
    """The reference matrix's block ``rows x cols``."""
    i = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
    return np.sin(0.37 * i + 0.11 * j) * (1.0 + i) + 1e-3 * j


def reference(shape: tuple[int, int]) -> np.ndarray:
    """The whole reference matrix of ``shape``, float32 as the stores keep it."""
    return values(range(shape[0]), range(shape[1])).astype(np.float32)


class Hang(Exception):
    """A step did not return within its bound."""


def bounded(
    step: Callable[[], Any], bound_s: float = STEP_S, extra_s: Callable[[], float] | None = None
) -> Any:
    """``step()`` in a thread; its result, its exception, or :class:`Hang` after ``bound_s``
    plus ``extra_s()`` seconds (looked up as the step runs: time its faults may cost)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = step()
        except BaseException as exc:
            out["error"] = exc

    t0 = now()
    thread = threading.Thread(target=run, name="soak-step", daemon=True)
    thread.start()
    limit = bound_s
    while thread.is_alive() and now() - t0 < limit:
        thread.join(min(1.0, max(0.0, limit - (now() - t0))))
        limit = bound_s + (extra_s() if extra_s is not None else 0.0)
    if thread.is_alive():
        raise Hang(f"a step did not return within {limit:.0f} s; {stuck_at(thread)}")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def stuck_at(thread: threading.Thread, depth: int = 10) -> str:
    """Where ``thread`` is now, innermost first (a failure line is cut short at its end): the
    innermost frame, then up to ``depth`` frames of infl_array (function module:line), so that
    a hang names the wait it is in."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "its stack is gone"
    frames = traceback.extract_stack(frame)[::-1]
    ours = [f for f in frames[1:] if "infl_array" in f.filename][:depth]
    shown = (f"{f.name} {Path(f.filename).name}:{f.lineno}" for f in [frames[0], *ours])
    return "stuck in " + " < ".join(shown)


def check_blocks(
    store: Any, expected: np.ndarray, close: Callable[[Any, Any], bool] = np.array_equal
) -> tuple[set, set]:
    """``(stored blocks, wrong blocks)`` of the matrix of ``store`` (a path or zarr store).

    Every stored block is read with plain zarr: it must decode and be ``close`` to ``expected``
    (exactly equal by default); a block not stored must read as all NaN.
    """
    import zarr

    import infl_array as ia

    arr = ia.open(store)
    raw = zarr.open_array(store, path="influence", mode="r")
    (br, bc), (g0, g1) = arr.block_shape, arr.grid_shape
    stored = {(int(i), int(j)) for i, j in np.argwhere(arr.computed)}
    wrong = set()
    for i in range(g0):
        for j in range(g1):
            sel = (slice(i * br, (i + 1) * br), slice(j * bc, (j + 1) * bc))
            try:
                got = raw[sel]
            except Exception:
                wrong.add((i, j))
                continue
            if (i, j) in stored:
                if not close(got, expected[sel]):
                    wrong.add((i, j))
            elif not np.isnan(got).all():
                wrong.add((i, j))
    return stored, wrong


def check_then_refill(store: Any, expected: np.ndarray, tally: Tally, label: str) -> None:
    """After a fault: every block of ``store`` right (:func:`check_blocks`), then a refill
    computes exactly the missing blocks and the whole matrix equals ``expected``."""
    import infl_array as ia

    stored, wrong = bounded(lambda: check_blocks(store, expected))
    g = ia.open(store).grid_shape
    n_blocks = g[0] * g[1]
    tally.blocks_checked += 2 * n_blocks
    tally.blocks_wrong += len(wrong)
    refilled = bounded(lambda: ia.open(store, fn=values).fill(progress=False))
    final = bounded(lambda: np.asarray(ia.open(store)))
    if wrong or refilled != n_blocks - len(stored) or not np.array_equal(final, expected):
        tally.blocks_wrong += 1
        tally.fail(f"{label}: wrong {sorted(wrong)}, refilled {refilled}")


@dataclass
class Tally:
    """Counts of one fault kind: faults injected, blocks checked, lost, wrong, hangs, and how
    each fault ended (``outcomes``: ``"recomputed"``, ``"clear error: CorruptBlockError"``...)."""

    faults: int = 0
    blocks_checked: int = 0
    blocks_lost: int = 0
    blocks_wrong: int = 0
    hangs: int = 0
    unclear_errors: int = 0
    checks_failed: int = 0
    slowest_step_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, what: str) -> None:
        """Record a failed check (kept for the report: the first 20)."""
        if len(self.failures) < 20:
            self.failures.append(what)

    def timed(self, step: Callable[[], Any], extra_s: Callable[[], float] | None = None) -> Any:
        """:func:`bounded` ``step()``, its time kept in ``slowest_step_s`` when the slowest."""
        t0 = now()
        try:
            return bounded(step, extra_s=extra_s)
        finally:
            self.slowest_step_s = max(self.slowest_step_s, now() - t0)

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts to these."""
        for name in ("faults", "blocks_checked", "blocks_lost", "blocks_wrong", "hangs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unclear_errors += other.unclear_errors
        self.checks_failed += other.checks_failed
        self.slowest_step_s = max(self.slowest_step_s, other.slowest_step_s)
        self.outcomes.update(other.outcomes)
        for f in other.failures:
            self.fail(f)

    def as_json(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "blocks_checked": self.blocks_checked,
            "blocks_lost": self.blocks_lost,
            "blocks_wrong": self.blocks_wrong,
            "hangs": self.hangs,
            "unclear_errors": self.unclear_errors,
            "checks_failed": self.checks_failed,
            "slowest_step_s": round(self.slowest_step_s, 1),
            "outcomes": dict(sorted(self.outcomes.items())),
            "failures": self.failures,
            "seconds": round(self.seconds, 1),
        }


def clear_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error a user can act on: infl_array's own, or an ``OSError`` whose
    message names the store's block or object and the fix."""
    import infl_array as ia

    own = (ia.CorruptBlockError, ia.NotAStoreError, ia.MissingBlockError, ia.StaleCacheError)
    if isinstance(exc, own):
        return True
    text = str(exc)
    return isinstance(exc, (OSError, RuntimeError)) and (" block " in text or "store" in text)


def files_of(root: Path) -> list[str]:
    """Every file of a local store, relative to it, sorted (``.partial`` files too)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def now() -> float:
    return time.perf_counter()
