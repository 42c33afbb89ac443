"""Growing a store along one axis: what ``append_train`` / ``append_test`` do to the arrays.

Appending ``m`` points to an axis of ``n`` (cut in blocks of ``length``) changes the store in
three steps (the commit protocol of :mod:`infl_array.storage.segments`):

1. **Prepare** (valid under the old shape, idempotent):

   * *partial last block*: when ``n`` is not a multiple of ``length``, the last block along the
     axis holds fewer points than it will; its stored chunk covers only the old points (zarr
     pads it), so after the growth it would read as a whole block with NaN where the new
     points go. Every chunk of that block is deleted: of the matrix (the whole block column
     or row), of the side's stored factors, of the self-influence, and of the top-k arrays
     whose rows are on this axis. The next read or fill computes those blocks again, whole
     (at most one block per row or column of blocks is computed twice);
   * *top-k arrays reduced along this axis* (the best train points per test point, when
     train grows): their stored rows move to a base over ``n`` points
     (:mod:`infl_array.storage.topk_bases`), so computing a row again scans only the new points.

2. **Commit**: the segment record is written, and the chunks of the partial last block are
   deleted again (a reader opened before the append may have computed and stored them, short,
   before the record; from the record on, such a write is refused:
   :func:`~infl_array.storage.segments.check_not_grown`).
3. **Settle**: the arrays whose axis grew are resized (new blocks are simply not computed yet)
   and the metadata records the new shape (:func:`~infl_array.storage.segments.settled_meta`).

Blocks, factor blocks, self-influence and top-k rows not named above stay stored and valid: a
grown store computes only the new blocks (plus the partial ones). One process appends at a
time, and no fill may run on the store meanwhile (a filler holding the old shape would write
old-shaped blocks): an append refuses to start while another process holds live claims on the
store's units (:func:`~infl_array.storage.claims.live_owners`); the claims of a killed filler
expire within a claim's lifetime.

This module knows zarr and numpy, not torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from infl_array.storage import layout
from infl_array.storage.claims import CLAIM_TTL_S, live_owners
from infl_array.storage.grid import BlockGrid
from infl_array.storage.segments import Segment, settled_meta, write_segment
from infl_array.storage.store import InfluenceStore
from infl_array.storage.topk import find_top_k_grid
from infl_array.storage.topk_bases import drop_row_block, keep_rows_as_base, top_k_arrays

__all__ = ["AxisGrowth", "grow_store"]


@dataclass(frozen=True)
class AxisGrowth:
    """``n`` points of the ``side`` axis, cut in blocks of ``length``, grow to ``new_n``.

    Examples
    --------
    >>> g = AxisGrowth("train", n=10, new_n=15, length=4)
    >>> g.axis, g.partial_block, g.span
    (1, 2, range(10, 15))
    >>> AxisGrowth("test", n=8, new_n=9, length=4).partial_block is None
    True
    """

    side: str
    n: int
    new_n: int
    length: int

    def __post_init__(self) -> None:
        if self.side not in layout.FACTOR_SIDES or not 0 < self.n < self.new_n or self.length < 1:
            raise ValueError(
                f"an axis grows from n > 0 to a larger new_n; got side={self.side!r}, "
                f"n={self.n}, new_n={self.new_n}, length={self.length}."
            )

    @property
    def axis(self) -> int:
        """The matrix's axis that grows (0: test, 1: train)."""
        return layout.FACTOR_SIDES.index(self.side)

    @property
    def span(self) -> range:
        """The new points."""
        return range(self.n, self.new_n)

    @property
    def partial_block(self) -> int | None:
        """The last block along the axis when it is partial (it then grows), else None."""
        return self.n // self.length if self.n % self.length else None


def grow_store(store: InfluenceStore, growth: AxisGrowth, segment: Segment) -> None:
    """Grow ``store`` by ``growth``, recording ``segment`` (see the module docstring).

    The store object's metadata is settled too; its arrays' objects are not: reopen the store
    to read them at the new shape.
    """
    store.matrix.check_writable()
    _check_no_fill_running(store)
    _drop_partial_blocks(store, growth)
    for where in top_k_arrays(store):
        if _reduced_side(where) == growth.side:
            keep_rows_as_base(store, where, growth.n)
    write_segment(store.matrix.zarr_store, segment)
    # again: a handle opened before the append may have stored the partial block since the
    # first pass; from the record on, such writes are refused (segments.check_not_grown)
    _drop_partial_blocks(store, growth)
    store.meta = settled_meta(store.group, store.meta, store.where, read_only=False)


def _check_no_fill_running(store: InfluenceStore) -> None:
    """``RuntimeError`` while other processes hold live claims on the store's units."""
    owners: set[str] = set()
    for path in store.array_paths():
        part = layout.top_k_part(path)
        if part is None or part[1] == "values":  # a top-k array's claims are its values'
            with contextlib.suppress(ValueError):  # an array the layout does not name
                prefix = layout.array_layout(path).claims_prefix
                owners |= live_owners(store.matrix.zarr_store, prefix)
    if owners:
        raise RuntimeError(
            f"cannot append to {store.where} while it is being filled: {len(owners)} other "
            f"process(es) hold claims on its blocks ({', '.join(sorted(owners)[:3])}). Append "
            f"when the fills finish (the claims of a killed filler expire within "
            f"{CLAIM_TTL_S:.0f} s); nothing was changed."
        )


def _reduced_side(where: layout.TopKLayout) -> str:
    """The side a top-k array reduces over (its rows are the other side)."""
    return "train" if where.axis == 1 else "test"


def _drop_partial_blocks(store: InfluenceStore, growth: AxisGrowth) -> None:
    """Delete every stored chunk of the partial last block along the growing axis."""
    b = growth.partial_block
    if b is None:
        return
    matrix = store.matrix
    if growth.axis == 0:
        _delete(matrix, [c for c in matrix.list_computed(rows=[b]) if c[0] == b])
    else:
        _delete(matrix, [c for c in matrix.list_computed() if c[1] == b])
    factors = store.side_grid(layout.factors(growth.side).path)
    if factors is not None:
        _delete(factors, [(b, 0)])
    if growth.side == "train":
        self_influence = store.side_grid(layout.SELF_INFLUENCE.path)
        if self_influence is not None:
            _delete(self_influence, [(0, b)])
    for where in top_k_arrays(store):
        grid = find_top_k_grid(store, where)
        if grid is not None and _reduced_side(where) != growth.side and grid.has_blocks([(b, 0)]):
            drop_row_block(grid, (b, 0))


def _delete(grid: BlockGrid, blocks: list[tuple[int, int]]) -> None:
    for coords in grid.has_blocks(blocks):
        grid.delete_block(coords)
