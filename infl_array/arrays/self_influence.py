"""Self-influence: ``grad^T (H + lambda*Id)^-1 grad`` of each train point, lazy and cached.

The values live in the array ``"self_influence"`` of the same zarr group (shape ``(n_train,)``,
one chunk per train block, the influence array's codecs and NaN fill value), created on first
use. Its engine (:mod:`infl_array.engine.block_engine`) sees it as one row of blocks, computed by
the source's ``diagonal`` capability: like the influence matrix, a chunk is computed on the first
read that touches it, written once with one atomic chunk write, and read from the store ever
after. Indexing follows numpy for 1-D arrays: the key is applied to the ``(1, n_train)`` row
view with a leading ``0``, which gives exactly numpy's 1-D results and exception types.
"""

from __future__ import annotations

from typing import Any

from infl_array.arrays.front import LazyArray
from infl_array.display.html import ArraySummary, array_html
from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.sources import DiagonalBlocks, capabilities
from infl_array.errors import MissingBlockError
from infl_array.storage.grid import BlockGrid
from infl_array.storage.layout import SELF_INFLUENCE
from infl_array.storage.segments import check_not_grown

__all__ = ["SelfInfluenceArray", "open_self_influence"]

_MISSING_FIX = (
    "Reopen with ia.open(store, model, test=..., train=...): self-influence needs the model."
)


class SelfInfluenceArray(LazyArray):
    """The self-influence of every train point of a model-backed influence array."""

    _slice_hint = "si[start:stop]"

    def __init__(self, engine: BlockEngine) -> None:
        super().__init__(engine, (engine.shape[1],))

    @property
    def block_len(self) -> int:
        """Train points per block."""
        return self._engine.block_shape[1]

    def _engine_key(self, key: Any) -> Any:
        return (0, *key) if isinstance(key, tuple) else (0, key)

    def __repr__(self) -> str:
        engine = self._engine
        return (
            f"SelfInfluenceArray(shape={self.shape}, dtype={self.dtype}, blocks computed "
            f"{len(engine.refresh())}/{engine.grid_shape[1]}, store={engine.store.where})"
        )

    def _repr_html_(self) -> str:
        """The notebook's view (:func:`infl_array.display.html.array_html`): one row of blocks."""
        facts = (
            ("shape", str(self.shape)),
            ("dtype", str(self.dtype)),
            ("block length", str(self.block_len)),
            ("store", self._engine.store.where),
        )
        summary = ArraySummary("SelfInfluenceArray", facts, self._engine.computed_mask())
        return array_html(summary)


def open_self_influence(matrix: BlockEngine) -> SelfInfluenceArray:
    """The self-influence array beside ``matrix`` (created in the store on first use)."""
    store = matrix.store
    diagonal = capabilities(matrix.source).diagonal
    grid = store.side_grid(SELF_INFLUENCE.path)
    if grid is None:
        if diagonal is None:
            raise MissingBlockError(
                (0, 0),
                f"the store {store.where} holds no self-influence yet, and this array has no "
                "model to compute it (self-influence needs a model-backed array). Reopen with "
                "ia.open(store, model, test=..., train=...).",
            )
        n_train, block_cols = matrix.shape[1], matrix.block_shape[1]
        grid = store.create_side_grid(SELF_INFLUENCE.path, n_train, block_cols)
    elif grid.shape[1] != matrix.shape[1]:  # the store grew since ``matrix`` was opened
        held = {"train": matrix.shape[1]}
        check_not_grown(store.matrix.zarr_store, store.where, held, "its self-influence")
    return SelfInfluenceArray(self_influence_engine(matrix, grid))


def self_influence_engine(matrix: BlockEngine, grid: BlockGrid) -> BlockEngine:
    """The engine of the self-influence ``grid`` beside ``matrix``: it computes blocks when
    the matrix's source has the ``diagonal`` capability, else it only reads."""
    diagonal = capabilities(matrix.source).diagonal
    source = None
    if diagonal is not None and matrix.source is not None:
        source = DiagonalBlocks(diagonal, grid.shape[1], matrix.source)
    return BlockEngine(matrix.store, grid, source, missing_fix=_MISSING_FIX)
