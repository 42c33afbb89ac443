"""Self-influence: ``grad^T (H + lambda*Id)^-1 grad`` of each train point, lazy and cached.

The values live in the array ``"self_influence"`` of the same zarr group (shape ``(n_train,)``,
one chunk per train block, the influence array's codecs and NaN fill value), created on first
use. Like the influence matrix, a chunk is computed on the first read that touches it, written
once with one atomic chunk write, and read from the store ever after. Indexing follows numpy
for 1-D arrays: the key is applied to the ``(1, n_train)`` row view with a leading ``0``, which
gives exactly numpy's 1-D results and exception types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from infl_array import indexing
from infl_array.compute import check_block, to_numpy
from infl_array.errors import MissingBlockError
from infl_array.plan import axis_blocks
from infl_array.store import empty_chunks_kept, keep_empty_chunks

if TYPE_CHECKING:
    from infl_array.array import InfluenceArray

ARRAY_NAME = "self_influence"


class SelfInfluenceArray:
    """The self-influence of every train point of a model-backed :class:`InfluenceArray`."""

    def __init__(self, parent: InfluenceArray) -> None:
        self._parent = parent
        self._store = parent._store
        self._array = _open_or_create(parent)
        self._known: set[int] = set()
        self.blocks_computed = 0

    @property
    def shape(self) -> tuple[int]:
        return (self._parent.shape[1],)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._parent.dtype

    @property
    def ndim(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def block_len(self) -> int:
        return self._parent.block_shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        n_blocks = -(-self.size // self.block_len)
        known = self._list_computed()
        return (
            f"SelfInfluenceArray(shape={self.shape}, dtype={self.dtype}, blocks computed "
            f"{len(known)}/{n_blocks}, store={self._store.where})"
        )

    def __getitem__(self, key: Any) -> Any:
        full_key = (0, *key) if isinstance(key, tuple) else (0, key)
        return indexing.getitem((1, self.size), self.dtype, full_key, _Reader(self))

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("the self-influence array is read-only: its values are computed.")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                "np.asarray(self_influence, copy=False) is impossible: the values are stored "
                "compressed, so a numpy array of them is always a copy. Use copy=None."
            )
        out = np.asarray(self[:])
        return out if dtype is None else out.astype(dtype, copy=False)

    # ------------------------------------------------------------------ blocks
    def _list_computed(self) -> set[int]:
        grid = -(-self.size // self.block_len)
        return {j for j in range(grid) if self._exists(j)}

    def _exists(self, j: int) -> bool:
        return bool(self._store.has_array_chunk(ARRAY_NAME, (j,)))

    def _bounds(self, j: int) -> slice:
        return slice(j * self.block_len, min((j + 1) * self.block_len, self.size))

    def ensure(self, blocks: list[int]) -> None:
        for j in blocks:
            if j in self._known:
                continue
            if self._exists(j):
                self._known.add(j)
                continue
            self._compute(j)

    def _compute(self, j: int) -> None:
        bounds = self._bounds(j)
        source = self._parent._source
        if source is None or not hasattr(source, "self_influence"):
            raise MissingBlockError(
                (0, j),
                f"self-influence block {j} (train points {bounds.start}:{bounds.stop}) is not "
                f"in the store {self._store.where} and cannot be computed: it needs the model. "
                "Reopen with ia.open(store, model, test=..., train=...).",
            )
        raw = to_numpy(source.self_influence(range(bounds.start, bounds.stop)))
        values = check_block(
            raw.reshape(1, -1) if raw.ndim == 1 else raw,
            (0, j),
            (1, bounds.stop - bounds.start),
            self.dtype,
        )[0]
        with empty_chunks_kept():
            self._array[bounds] = values
        self._known.add(j)
        self.blocks_computed += 1


class _Reader:
    def __init__(self, owner: SelfInfluenceArray) -> None:
        self._owner = owner

    def read_outer(self, rows: indexing.AxisSel, cols: indexing.AxisSel) -> np.ndarray:
        self._owner.ensure(axis_blocks(cols, self._owner.block_len).tolist())
        values = np.asarray(self._owner._array.get_orthogonal_selection((cols,)))
        return values[None, :]

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self._owner.ensure(np.unique(cols // self._owner.block_len).tolist())
        return np.asarray(self._owner._array.get_coordinate_selection((cols,)))


def _open_or_create(parent: InfluenceArray) -> zarr.Array:
    group = parent._store.group
    if ARRAY_NAME in group:
        existing = group[ARRAY_NAME]
        assert isinstance(existing, zarr.Array)
        return keep_empty_chunks(existing)
    if parent._source is None or not hasattr(parent._source, "self_influence"):
        raise MissingBlockError(
            (0, 0),
            f"the store {parent._store.where} holds no self-influence yet, and this array has "
            "no model to compute it (self-influence needs a model-backed array). Reopen with "
            "ia.open(store, model, test=..., train=...).",
        )
    try:
        return parent._store.create_side_array(ARRAY_NAME, parent.shape[1], parent.block_shape[1])
    except zarr.errors.ContainsArrayError:  # another process created it first
        existing = zarr.open_group(group.store, mode="r+")[ARRAY_NAME]
        assert isinstance(existing, zarr.Array)
        return keep_empty_chunks(existing)


def self_influence(arr: InfluenceArray) -> SelfInfluenceArray:
    """The lazy self-influence array of ``arr`` (created in the store on first use)."""
    return SelfInfluenceArray(arr)
