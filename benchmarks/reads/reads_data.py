"""The data of ``bench_reads.py``: influence-like values and block functions, seeded per block.

Every function is deterministic (seeded by ``SEED`` and the block's first row and column), so a
block has the same values in every run and every process.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SHAPE = (4000, 40000)
BLOCK = (256, 4096)
SEED = 20240611


def t_block(rows: range, cols: range, scale: float = 1e-3) -> np.ndarray:
    """Influence-like values: Student-t (df=3) times ``scale``, deterministic per block."""
    rng = np.random.default_rng([SEED, rows.start, cols.start])
    return (rng.standard_t(3, size=(len(rows), len(cols))) * scale).astype(np.float32)


def lowrank_block(rows: range, cols: range, rank: int = 512) -> np.ndarray:
    """Inner products of heavy-tailed per-sample factors, as a factorised backend computes them.

    Test factors ``(len(rows), rank)`` and train factors ``(rank, len(cols))`` are drawn per
    block (seeded by its coordinates), then multiplied: one float32 matmul of
    ``(256, 512) x (512, 4096)`` per full block.
    """
    rng = np.random.default_rng([SEED, 1, rows.start, cols.start])
    a = rng.standard_t(3, size=(len(rows), rank)).astype(np.float32)
    b = rng.standard_t(3, size=(rank, len(cols))).astype(np.float32)
    return (a @ b) * np.float32(1e-3 / rank)


def matmul_factory(rank: int = 512) -> Callable[[range, range], np.ndarray]:
    """A block function whose cost is one ``(256, rank) x (rank, 4096)`` float32 matmul.

    The factors are generated once up front (as a backend caches its per-sample factors), so
    a block costs its matmul only.
    """
    rng = np.random.default_rng(SEED + 2)
    test_f = rng.standard_t(3, size=(SHAPE[0], rank)).astype(np.float32)
    train_f = rng.standard_t(3, size=(rank, SHAPE[1])).astype(np.float32)
    scale = np.float32(1e-3 / rank)

    def fn(rows: range, cols: range) -> np.ndarray:
        return (test_f[rows.start : rows.stop] @ train_f[:, cols.start : cols.stop]) * scale

    return fn


def cheap_block(rows: range, cols: range) -> np.ndarray:
    """A block function that costs almost nothing: a broadcast sum."""
    r = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    c = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    return r * np.float32(1e-3) + c * np.float32(1e-7)
