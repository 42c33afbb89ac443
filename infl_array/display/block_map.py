"""A map of which blocks are computed, shrunk to a bounded number of cells.

A store of ``(10**6, 10**7)`` points in blocks of ``(256, 4096)`` has a grid of about
``3,900 x 2,400`` blocks: too many to draw one by one in a notebook. :func:`block_map` groups
neighbouring blocks into at most ``max_cells`` cells per axis (each cell covers the same
number of blocks, give or take one) and gives each cell the fraction of its blocks that are
computed, so a partly filled band still shows where it is. A grid that fits is kept as is
(fractions 0 or 1).

>>> grid = np.array([[True, True, False, False], [True, True, True, False]])
>>> m = block_map(grid, max_cells=(1, 2))
>>> m.fraction.tolist(), m.blocks_per_cell
([[1.0, 0.25]], (2, 2))
>>> m.computed, m.total
(5, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BlockMap", "block_map"]


@dataclass(frozen=True, slots=True)
class BlockMap:
    """Fractions of computed blocks per cell of a shrunk grid.

    Attributes
    ----------
    fraction : numpy.ndarray
        ``float64`` of shape ``(rows, cols)``, each in ``[0, 1]``.
    blocks_per_cell : tuple of int
        Blocks a cell covers along each axis, at most (the last cell may cover fewer).
    computed, total : int
        Computed blocks and all blocks of the full grid.
    """

    fraction: np.ndarray
    blocks_per_cell: tuple[int, int]
    computed: int
    total: int

    def __post_init__(self) -> None:
        if self.fraction.ndim != 2:
            raise ValueError(f"a block map is 2-D; got shape {self.fraction.shape}")


def _edges(n: int, cells: int) -> np.ndarray:
    """Start of each of ``min(n, cells)`` near-equal groups of ``n`` items."""
    groups = max(1, min(n, cells))
    return np.unique(np.arange(groups) * n // groups)


def block_map(computed: np.ndarray, max_cells: tuple[int, int] = (32, 64)) -> BlockMap:
    """The fraction of computed blocks in each cell of at most ``max_cells`` cells.

    Parameters
    ----------
    computed : numpy.ndarray
        Boolean, 2-D (a matrix's ``arr.computed``) or 1-D (one row of blocks, such as a
        self-influence array's; shown as one row).
    max_cells : tuple of int
        At most this many cells per axis (rows, columns); both at least 1.

    Returns
    -------
    BlockMap
    """
    mask = np.asarray(computed, dtype=bool)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(
            f"computed must be a non-empty 1-D or 2-D boolean grid of blocks; got shape "
            f"{mask.shape}. Pass arr.computed."
        )
    if min(max_cells) < 1:
        raise ValueError(f"max_cells must be at least (1, 1); got {max_cells}")
    row_edges, col_edges = _edges(mask.shape[0], max_cells[0]), _edges(mask.shape[1], max_cells[1])
    counts = np.add.reduceat(np.add.reduceat(mask.astype(np.int64), row_edges, 0), col_edges, 1)
    sizes = np.outer(
        np.diff(row_edges, append=mask.shape[0]), np.diff(col_edges, append=mask.shape[1])
    )
    per_cell = (-(-mask.shape[0] // len(row_edges)), -(-mask.shape[1] // len(col_edges)))
    return BlockMap(counts / sizes, per_cell, int(mask.sum()), int(mask.size))
