"""Shared test helpers: a materialised matrix behind a block function that counts its calls."""

from __future__ import annotations

import numpy as np


class CountingFn:
    """``fn(rows, cols)`` over a fixed matrix, recording every block it is asked for."""

    def __init__(self, full: np.ndarray) -> None:
        self.full = full
        self.calls: list[tuple[int, int, int, int]] = []

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        assert isinstance(rows, range) and isinstance(cols, range)
        assert rows.step == 1 and cols.step == 1
        self.calls.append((rows.start, rows.stop, cols.start, cols.stop))
        return self.full[rows.start : rows.stop, cols.start : cols.stop].copy()


def influence_like(shape: tuple[int, int], seed: int = 0, dtype: str = "float32") -> np.ndarray:
    """Roughly normal values with heavy tails, like influence matrices."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(df=3, size=shape).astype(dtype)


def block_fn_module_level(rows: range, cols: range) -> np.ndarray:
    """A picklable block function (for process workers): ``100 * row + col``."""
    return np.add.outer(np.arange(rows.start, rows.stop) * 100.0, np.arange(cols.start, cols.stop))
