"""Top-k by streaming: the ``k`` best entries of each row, merged block by block.

:func:`scan_top_k` visits the blocks a set of rows needs, train block by train block (so a
model-backed source computes each train factor once per scan and keeps the test factors in
its memo), and keeps a running ``(n_rows, k)`` best per row. A block already in the store is
read; a missing one is computed in memory from the source (its factors, stored or computed)
and *not written*: the answer of a top-k is ``k`` values per row, not the dense matrix.
Memory is one block plus the running best, whatever the matrix size.

Exactness: the result equals the brute force ``np.argsort(-row, kind="stable")[:k]``
(``largest=False``: ``np.argsort(row, kind="stable")[:k]``): the best values, best first, ties
to the lower index. Each block is cut to its own best ``k`` per row (a partition, then the
tied entries at the boundary taken by lower index), and merged with the running best by
``(key, index)``, so the visiting order does not change the answer.

This module knows numpy and the engine, not torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.sources import capabilities
from infl_array.storage.grid import BlockCoords
from infl_array.storage.meta import StoreMeta

__all__ = [
    "NormBounds",
    "ScanCounts",
    "block_best",
    "bound_slack",
    "check_k",
    "computes_stored",
    "merge_best",
    "scan_coords",
    "scan_top_k",
    "worst_kept",
]


@dataclass
class ScanCounts:
    """Matrix blocks a top-k scan read from the store, computed in memory, or skipped."""

    blocks_read: int = 0
    blocks_computed: int = 0
    blocks_skipped: int = 0


def check_k(k: Any, n: int, axis: int, *, minimum: int = 0) -> int:
    """``k`` as an int in ``minimum..n`` (``n``: the length of the reduced axis), else an error.

    >>> check_k(3, 10, 1)
    3
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not minimum <= k <= n:
        raise ValueError(
            f"k must be an int in {minimum}..{n} (the length of axis {axis}, as torch.topk "
            f"requires: selected index k out of range otherwise); got {k!r}. Use k <= {n}, "
            f"or axis={1 - axis} for the other side."
        )
    return int(k)


def computes_stored(engine: BlockEngine) -> bool:
    """Whether a top-k of ``engine`` computes its missing blocks into the store first: a plain
    block function's are (as every read of them is); a source with factors writes none."""
    return engine.source is not None and capabilities(engine.source).factor_reuse is None


def _key(values: np.ndarray, largest: bool) -> np.ndarray:
    """The sort key: smaller is better (negation is exact)."""
    return -values if largest else values


def worst_kept(best: tuple[np.ndarray, np.ndarray] | None, k: int, largest: bool) -> Any:
    """The sort key of each row's ``k``-th best entry so far (``(r,)``), or None (nothing can
    be dropped) while the rows hold fewer than ``k`` entries or a row's ``k``-th best is NaN
    (a NaN of a lower index could still enter)."""
    if best is None or best[0].shape[1] < k or k == 0:
        return None
    kth = _key(best[0][:, k - 1], largest)
    return None if np.isnan(kth).any() else kth


def block_best(
    values: np.ndarray, first: int, k: int, largest: bool, worst: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``min(k, m)`` entries of each row of ``values`` (``(r, m)``, columns
    ``first..first+m``), best first, ties to the lower index; ``(values, indices)``.

    ``worst`` (:func:`worst_kept`, per row): the entries whose key is worse cannot enter a
    running best that already holds ``k`` entries, so they are dropped before the sort. Without
    it, a wide block takes the ``k``-th best of its first columns (:func:`_prefix_worst`): at
    least ``k`` entries of the row are that good, so the worse ones cannot be among its best
    ``k`` either, and only the few others are sorted. When
    few remain (after the first blocks of a scan, almost all rows keep a handful), the rows
    are padded to the most kept by one row with entries that sort after every real one (key
    ``inf``, index ``2**62``), which a merge with the full running best never keeps.

    >>> v, i = block_best(np.array([[1.0, 3.0, 3.0, 2.0]]), 10, 2, True)
    >>> v.tolist(), i.tolist()
    ([[3.0, 3.0]], [[11, 12]])
    >>> v, i = block_best(np.array([[1.0, 3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]]), 0, 2, True,
    ...                   worst=np.array([-2.5]))
    >>> v.tolist(), i.tolist()
    ([[3.0]], [[1]])
    """
    if worst is None:
        worst = _prefix_worst(values, k, largest)
    if worst is not None:
        kept = _kept_candidates(values, first, largest, worst)
        if kept is not None:
            values, first, cols_of = kept
            best_v, best_i = block_best(values, 0, k, largest)
            return best_v, np.take_along_axis(cols_of, best_i, axis=1)
    r, m = values.shape
    kk = min(k, m)
    key = _key(values, largest)
    if kk == 0:
        cols = np.zeros((r, 0), dtype=np.int64)
    elif kk == m:
        cols = np.argsort(key, axis=1, kind="stable")
    else:
        cols = np.argpartition(key, kk - 1, axis=1)[:, :kk]
        sub = np.take_along_axis(key, cols, axis=1)
        kth = sub.max(axis=1, keepdims=True)  # the kk-th best of the row (NaN: sorts last)
        # rows with more entries tied at the boundary than were taken: lowest indices first
        unsure = _tied(key, kth).sum(axis=1) != _tied(sub, kth).sum(axis=1)
        if unsure.any():
            cols[unsure] = np.argsort(key[unsure], axis=1, kind="stable")[:, :kk]
            sub[unsure] = np.take_along_axis(key[unsure], cols[unsure], axis=1)
        cols = np.take_along_axis(cols, np.lexsort((cols, sub), axis=-1), axis=1)
    return np.take_along_axis(values, cols, axis=1), cols.astype(np.int64) + first


def _tied(key: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """Entries equal to their row's ``kth``, NaN equal to NaN (NaN ranks last, tied)."""
    return (key == kth) | (np.isnan(key) & np.isnan(kth))


PREFIX_SHARE = 8
"""A wide block without a running best is cut by the ``k``-th best of its first
``1 / PREFIX_SHARE`` columns (:func:`_prefix_worst`). With the flat searches of
:func:`_kept_candidates`, the selection of a band of eight 2,000 x 8,192 blocks (``k=100``,
normal values) took about half its time before (1.2-1.9 s against 2.3-4.2 s, alternating runs
on the shared 2-core machine)."""


def _prefix_worst(values: np.ndarray, k: int, largest: bool) -> Any:
    """The sort key of each row's ``k``-th best entry among its first ``m // PREFIX_SHARE``
    columns (``(r,)``), or None: a block too narrow for it (fewer than ``2 * k`` such columns),
    or a row whose ``k``-th best there is NaN (nothing can be dropped by it).

    >>> _prefix_worst(np.arange(32.0).reshape(1, 32), 2, True).tolist()
    [-2.0]
    """
    c = values.shape[1] // PREFIX_SHARE
    if k == 0 or c < 2 * k:
        return None
    kth = np.partition(_key(values[:, :c], largest), k - 1, axis=1)[:, k - 1]
    return None if np.isnan(kth).any() else kth


def _kept_candidates(
    values: np.ndarray, first: int, largest: bool, worst: np.ndarray
) -> tuple[np.ndarray, int, np.ndarray] | None:
    """The entries of ``values`` not worse than ``worst`` (per row), packed into ``(r, c)``
    with their indices (padding: key ``inf``, index ``2**62``); None when more than a quarter
    of a row is kept (the plain sort is then as fast)."""
    r, m = values.shape
    # key <= worst without the negated copy: NaN entries fail both comparisons
    keep = values >= -worst[:, None] if largest else values <= worst[:, None]
    counts = keep.sum(axis=1)
    c = int(counts.max()) if r else 0
    if 4 * c > m:
        return None
    # flat positions, row-major: each row's columns in increasing order (flat searches and
    # takes: several times faster than their 2-D forms)
    flat = np.flatnonzero(keep)
    rows = flat // m
    to = rows * c + np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    pad = -np.inf if largest else np.inf
    packed = np.full((r, c), pad, dtype=values.dtype)
    cols = flat - rows * m
    packed.reshape(-1)[to] = (
        values.reshape(-1)[flat] if values.flags.c_contiguous else values[rows, cols]
    )
    cols_of = np.full((r, c), 2**62, dtype=np.int64)
    cols_of.reshape(-1)[to] = cols + first
    return packed, 0, cols_of


def merge_best(
    best: tuple[np.ndarray, np.ndarray] | None,
    new: tuple[np.ndarray, np.ndarray],
    k: int,
    largest: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two candidate sets per row, by ``(key, index)``.

    >>> a = (np.array([[5.0, 1.0]]), np.array([[7, 3]]))
    >>> b = (np.array([[5.0, 4.0]]), np.array([[2, 9]]))
    >>> [x.tolist() for x in merge_best(a, b, 3, True)]
    [[[5.0, 5.0, 4.0]], [[2, 7, 9]]]
    """
    if best is None:
        return new
    values = np.concatenate([best[0], new[0]], axis=1)
    indices = np.concatenate([best[1], new[1]], axis=1)
    order = np.lexsort((indices, _key(values, largest)), axis=-1)[:, :k]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(indices, order, axis=1)


def scan_coords(grid_shape: tuple[int, int], axis: int, row_blocks: Iterable[int]) -> list:
    """The blocks the rows of ``row_blocks`` need, train block by train block.

    Rows are test blocks for ``axis=1``, train blocks for ``axis=0``; either way the train
    block is the outer loop, so a train factor is used by consecutive blocks.

    >>> scan_coords((2, 3), 1, [1])
    [(1, 0), (1, 1), (1, 2)]
    >>> scan_coords((2, 3), 0, [2, 0])
    [(0, 0), (1, 0), (0, 2), (1, 2)]
    """
    g0, g1 = grid_shape
    rows = sorted(set(row_blocks))
    if axis == 1:
        return [(i, j) for j in range(g1) for i in rows]
    return [(i, j) for j in rows for i in range(g0)]


def scan_top_k(
    engine: BlockEngine,
    k: int,
    axis: int,
    largest: bool,
    row_blocks: Iterable[int],
    counts: ScanCounts | None = None,
    skip: bool = False,
    start: int = 0,
    band: range | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The top-``k`` along ``axis`` of every row of ``row_blocks``: ``{block: (values, indices)}``.

    Only the entries from index ``start`` on along the reduced axis are candidates (a top-k
    row brought up to date after an append scans only the new points,
    :mod:`infl_array.engine.top_k_bases`); a row with none gets no entry. ``band`` (block
    indices along the reduced axis) restricts the scan to those blocks
    (:mod:`infl_array.engine.top_k_bands`).

    Stored blocks are read, missing ones computed in memory (nothing is written); a missing
    block with no source raises :class:`~infl_array.errors.MissingBlockError` naming it. With
    ``skip`` and a source with factor norms (:class:`NormBounds`), blocks are visited in bound
    order and those that provably cannot enter a row block's top-k are skipped (counted in
    ``counts``). Off by default: on a trained MLP (ProjectedInfluence, 50,000 train points in
    index order) no block was skippable, as every block of 4096 points holds a point of
    near-maximal norm; with the train points in norm order, 85% would be.
    """
    counts = counts if counts is not None else ScanCounts()
    known = engine.refresh()
    rows = sorted(set(row_blocks))
    n_inner = engine.grid_shape[axis]
    first_inner = start // engine.block_shape[axis] if start < engine.shape[axis] else n_inner
    inner = [b for b in range(first_inner, n_inner) if band is None or b in band]
    bounds = NormBounds.of(engine, axis, rows, inner) if skip and k > 0 and rows else None
    if bounds is not None:
        inner = bounds.order
    # train blocks outermost: a train factor serves consecutive blocks
    if axis == 1:
        pairs = [(r, b) for b in inner for r in rows]
    else:
        pairs = [(r, b) for r in rows for b in inner]
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for r, b in pairs:
        found = best.get(r)
        hopeless = bounds.cannot_enter if bounds is not None else None
        if found is not None and hopeless is not None and hopeless(r, b, found, k, largest):
            counts.blocks_skipped += 1
            continue
        coords = (r, b) if axis == 1 else (b, r)
        block = _block(engine, coords, coords in known, counts)
        rows_of, cols_of = engine.grid.block_bounds(coords)
        first = cols_of.start if axis == 1 else rows_of.start
        values = block if axis == 1 else block.T
        if first < start:  # a block the new points share with old ones: the new ones only
            values, first = values[:, start - first :], start
        worst = worst_kept(found, k, largest)
        best[r] = merge_best(found, block_best(values, first, k, largest, worst), k, largest)
    return {r: (np.ascontiguousarray(v), np.ascontiguousarray(i)) for r, (v, i) in best.items()}


class NormBounds:
    """Bounds ``|I[i, j]| <= |t_i| |g_j|`` of a source whose blocks are plain inner products.

    ``order``: the inner blocks (along the reduced axis) by their largest factor norm, largest
    first, so the running top-k fills with large values early and later blocks are skipped.
    A block cannot enter a row block's top-k when, for every row, even its bound (inflated by
    :func:`bound_slack`) is strictly worse than the row's current ``k``-th value: a tie could
    still enter by a lower index, so ties are never skipped.
    """

    def __init__(
        self, row_norms: dict[int, np.ndarray], inner_max: dict[int, float], slack: float
    ) -> None:
        self.row_norms, self.inner_max, self.slack = row_norms, inner_max, slack
        self.order = sorted(inner_max, key=lambda b: (-inner_max[b], b))

    @classmethod
    def of(
        cls, engine: BlockEngine, axis: int, rows: list[int], inner: list[int]
    ) -> NormBounds | None:
        """The bounds of ``engine``'s source, or None when it has no factor norms."""
        norms = capabilities(engine.source).factor_norms
        if norms is None:
            return None
        row_side, inner_side = ("test", "train") if axis == 1 else ("train", "test")

        def span(side: str, b: int) -> range:
            s = engine.grid.block_bounds((b, 0) if side == "test" else (0, b))
            axis_slice = s[0] if side == "test" else s[1]
            return range(axis_slice.start, axis_slice.stop)

        width = 1
        row_norms = {}
        for r in rows:
            row_norms[r], width = norms.norms_of(row_side, span(row_side, r))
        inner_max = {}
        for b in inner:
            found, width = norms.norms_of(inner_side, span(inner_side, b))
            inner_max[b] = float(found.max())
        return cls(row_norms, inner_max, bound_slack(engine.store.meta, width))

    def cannot_enter(
        self, r: int, b: int, best: tuple[np.ndarray, np.ndarray], k: int, largest: bool
    ) -> bool:
        """Whether no entry of inner block ``b`` can enter row block ``r``'s top-``k``."""
        if best[0].shape[1] < k:
            return False
        kth = best[0][:, -1].astype(np.float64)
        bound = self.row_norms[r] * self.inner_max[b] * self.slack
        return bool(np.all(bound < (kth if largest else -kth)))


def bound_slack(meta: StoreMeta, width: int) -> float:
    """The factor by which ``|t| |g|`` is inflated so it bounds every stored ``|I[i, j]|``.

    Three roundings can make a stored value larger than ``|t| |g|`` (the norms of the factors
    as the source serves them): the float32 product of ``width`` terms (at most
    ``(width + 4) * 2 ** -23`` relative, with the norms' own rounding), the matrix's
    ``keepbits`` (``2 ** -(keepbits + 1)``) and the factors' ``keepbits`` (each factor within
    ``2 ** -(keepbits + 1)`` of the one its norm was taken of, so the product within
    ``(1 + 2 ** -(keepbits + 1)) ** 2``). The served factors are already rounded (their norms
    bound their products as they are), so the last term only keeps the bound valid if norms
    ever come from unrounded factors; it costs under 1% of the bound at ``keepbits=7``.

    >>> from infl_array.storage.meta import Compression, StoreMeta
    >>> meta = StoreMeta((4, 4), (2, 2), factor_compression=Compression(keepbits=7))
    >>> round(bound_slack(meta, 1024), 5)
    1.00795
    """
    product = 1.0 + (width + 4) * 2.0**-23
    matrix = 1.0 + meta.compression.relative_error_bound
    factors = meta.factor_compression
    factor = 1.0 + (0.0 if factors is None else factors.relative_error_bound)
    return product * matrix * factor**2 * (1.0 + 2.0**-23)


def _block(
    engine: BlockEngine, coords: BlockCoords, stored: bool, counts: ScanCounts
) -> np.ndarray:
    if stored:
        counts.blocks_read += 1
        cached = engine.cache.get(coords)
        return cached if cached is not None else engine.grid.read_block(coords)
    counts.blocks_computed += 1
    # rounded as the store would hold it: the answer is the stored matrix's top-k
    return engine.store.meta.compression.stored_values(engine.block_values(coords))
