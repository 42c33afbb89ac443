"""The numpy-like front end shared by every lazily computed array of a store.

:class:`LazyArray` gives an engine (:mod:`infl_array.engine.block_engine`) numpy's face: ``shape``,
``dtype``, ``ndim``, ``size``, ``nbytes``, ``len``, numpy-exact indexing
(:mod:`infl_array.arrays.indexing`), ``np.asarray`` with numpy 2's ``__array__(dtype, copy)`` and a
size limit, and read-only item assignment. :class:`~infl_array.arrays.influence.InfluenceArray`
(2-D) and :class:`~infl_array.arrays.self_influence.SelfInfluenceArray` (1-D, whose engine sees it
as one row) both build on it, so both get the same checks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from infl_array.arrays.indexing import Reader, getitem
from infl_array.arrays.numpy_api import array_function, check_unsupported, finish, refusal
from infl_array.arrays.reduce import normalize_axis, reduce, top_k
from infl_array.engine.block_engine import ArrayStats, BlockEngine
from infl_array.engine.cache import BlockCache

__all__ = ["LazyArray", "TransposedArray", "default_materialize_limit"]


def default_materialize_limit() -> int:
    """Half the machine's RAM (8 GiB where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _refused(symbol: str) -> Any:
    """An operator method that raises: the operator would need every value at once."""

    def method(self: Any, *other: Any) -> Any:
        raise refusal(self, f"the operator {symbol}")

    return method


class LazyArray:
    """A read-only array whose blocks an engine reads or computes (see the module docstring).

    Parameters
    ----------
    engine : BlockEngine
        The engine of the stored array.
    shape : tuple of int
        The array's shape as users see it (the engine's 2-D shape, or its one row's length).
    """

    __array_priority__ = 10.0
    _slice_hint = "arr[rows, cols]"

    def __init__(self, engine: BlockEngine, shape: tuple[int, ...]) -> None:
        self._engine = engine
        self._shape = shape
        self.materialize_limit_bytes = default_materialize_limit()
        """``np.asarray(arr)`` refuses arrays larger than this (default: half the RAM)."""

    # ------------------------------------------------------------------ numpy attributes
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._engine.dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return math.prod(self._shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self._shape[0]

    def __iter__(self) -> Iterator[Any]:
        """Rows (elements of a 1-D array) one at a time, as numpy iterates."""
        for i in range(len(self)):
            yield self[i]

    @property
    def chunks(self) -> tuple[int, ...]:
        """The shape of one block (zarr's meaning; ``dask.array.from_array`` aligns to it)."""
        return self._engine.block_shape if self.ndim == 2 else (self._engine.block_shape[1],)

    @property
    def block_cache(self) -> BlockCache:
        """Decoded blocks for small and repeated reads (:mod:`infl_array.engine.cache`);
        ``block_cache.max_bytes = 0`` turns it off."""
        return self._engine.cache

    @property
    def read_progress(self) -> bool:
        """Whether reads that compute blocks for more than a few seconds show a progress bar."""
        return self._engine.read_progress

    @read_progress.setter
    def read_progress(self, enabled: bool) -> None:
        self._engine.read_progress = bool(enabled)

    @property
    def stats(self) -> ArrayStats:
        """What this object computed so far (blocks, factor computations)."""
        return self._engine.stats()

    # ------------------------------------------------------------------ reading
    def _engine_key(self, key: Any) -> Any:
        """``key`` as a key of the engine's 2-D array."""
        return key

    def _reader(self) -> tuple[tuple[int, int], Reader]:
        """The 2-D array keys index, and what reads it (the engine's array, by default)."""
        return self._engine.shape, self._engine

    def __getitem__(self, key: Any) -> Any:
        shape, reader = self._reader()
        key = self._engine_key(key)
        return getitem(shape, self.dtype, key, reader, self.materialize_limit_bytes)

    @property
    def T(self) -> LazyArray:
        """The transposed array, lazily: ``arr.T[j]`` reads column ``j`` of ``arr``."""
        return self if self.ndim == 1 else TransposedArray(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(
            f"{type(self).__name__} is read-only: its values are computed, not assigned. "
            "Copy a slice to numpy first (np.asarray(arr[...])) to modify values."
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                f"np.asarray(arr, copy=False) is impossible: a {type(self).__name__} is "
                "computed and stored compressed, so a numpy array of it is always a new copy. "
                "Use copy=None (the default) or copy=True."
            )
        if self.nbytes > self.materialize_limit_bytes:
            raise MemoryError(
                f"refusing to materialise the whole {' x '.join(map(str, self.shape))} array: "
                f"{self.nbytes / 2**30:.1f} GiB exceeds materialize_limit_bytes "
                f"({self.materialize_limit_bytes / 2**30:.1f} GiB). Read a slice "
                f"({self._slice_hint}), use arr.top_k(...) or arr.to_dask(), or raise "
                "arr.materialize_limit_bytes on purpose."
            )
        out = np.asarray(self[...])
        return out if dtype is None else out.astype(dtype, copy=False)

    # ------------------------------------------------------------------ numpy's functions
    def __array_function__(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return array_function(self, func, args, kwargs)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raise refusal(self, f"np.{ufunc.__name__}")

    def _reduce(self, name: str, axis: Any, unsupported: dict[str, Any], **opts: Any) -> Any:
        check_unsupported(name, unsupported)
        ax = None if axis is None else normalize_axis(axis, self.ndim)
        result = reduce(self._engine, name, self._engine_axis(ax), opts.pop("ddof", 0))
        return self._reduce_result(name, result, ax, **opts)

    def _reduce_result(self, name: str, result: Any, axis: int | None, **opts: Any) -> Any:
        """numpy's ``dtype``, ``keepdims`` and ``out`` applied to a reduction's result."""
        dtype = opts.pop("dtype", None)
        if dtype is None and name in ("sum", "mean", "std", "var"):
            dtype = self.dtype
        return finish(result, axis=axis, ndim=self.ndim, dtype=dtype, name=name, **opts)

    def _engine_axis(self, axis: int | None) -> int | None:
        """The engine's axis for a (normalised) axis of this array."""
        return axis if self.ndim == 2 else None

    def sum(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **unsupported: Any,
    ) -> Any:
        """numpy's ``sum``, streamed block by block (accumulated in float64)."""
        return self._reduce("sum", axis, unsupported, dtype=dtype, out=out, keepdims=keepdims)

    def mean(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **unsupported: Any,
    ) -> Any:
        """numpy's ``mean``, streamed block by block (accumulated in float64)."""
        return self._reduce("mean", axis, unsupported, dtype=dtype, out=out, keepdims=keepdims)

    def std(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        ddof: int = 0,
        keepdims: bool = False,
        **unsupported: Any,
    ) -> Any:
        """numpy's ``std``, streamed in one pass (pairwise-merged moments in float64)."""
        return self._reduce(
            "std", axis, unsupported, dtype=dtype, out=out, keepdims=keepdims, ddof=ddof
        )

    def var(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        ddof: int = 0,
        keepdims: bool = False,
        **unsupported: Any,
    ) -> Any:
        """numpy's ``var``, streamed in one pass (pairwise-merged moments in float64)."""
        return self._reduce(
            "var", axis, unsupported, dtype=dtype, out=out, keepdims=keepdims, ddof=ddof
        )

    def min(
        self, axis: Any = None, out: Any = None, keepdims: bool = False, **unsupported: Any
    ) -> Any:
        """numpy's ``min``, streamed block by block."""
        return self._reduce("min", axis, unsupported, out=out, keepdims=keepdims)

    def max(
        self, axis: Any = None, out: Any = None, keepdims: bool = False, **unsupported: Any
    ) -> Any:
        """numpy's ``max``, streamed block by block."""
        return self._reduce("max", axis, unsupported, out=out, keepdims=keepdims)

    def argmin(self, axis: Any = None, out: Any = None, *, keepdims: bool = False) -> Any:
        """numpy's ``argmin`` (ties: the first), streamed block by block."""
        return self._reduce("argmin", axis, {}, out=out, keepdims=keepdims)

    def argmax(self, axis: Any = None, out: Any = None, *, keepdims: bool = False) -> Any:
        """numpy's ``argmax`` (ties: the first), streamed block by block."""
        return self._reduce("argmax", axis, {}, out=out, keepdims=keepdims)

    # ------------------------------------------------------------------ what is not lazy
    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        raise refusal(self, "arr.astype")

    def __bool__(self) -> bool:
        raise ValueError(
            f"the truth value of a {type(self).__name__} is ambiguous (as for numpy arrays of "
            "more than one element); use arr.size, or reduce first: bool(arr.max() > 0)."
        )

    # comparisons and arithmetic would need every value: refused, naming the lazy routes
    __eq__ = _refused("==")
    __ne__ = _refused("!=")
    __hash__ = object.__hash__
    __lt__, __le__ = _refused("<"), _refused("<=")
    __gt__, __ge__ = _refused(">"), _refused(">=")
    __add__ = __radd__ = _refused("+")
    __sub__ = __rsub__ = _refused("-")
    __mul__ = __rmul__ = _refused("*")
    __truediv__ = __rtruediv__ = _refused("/")
    __matmul__ = __rmatmul__ = _refused("@")
    __pow__ = _refused("**")
    __neg__ = _refused("unary -")
    __abs__ = _refused("abs()")


class TransposedArray(LazyArray):
    """A 2-D lazy array seen transposed: same engine, same blocks, axes swapped.

    Indexing is exact (numpy's rules applied to the transposed shape, the values read from the
    original array with rows and columns swapped); reductions and ``top_k`` map their axis;
    ``.T`` gives the original back.
    """

    def __init__(self, original: LazyArray) -> None:
        n0, n1 = original.shape
        super().__init__(original._engine, (n1, n0))
        self.materialize_limit_bytes = original.materialize_limit_bytes
        self._original = original

    def _reader(self) -> tuple[tuple[int, int], Reader]:
        n0, n1 = self._original.shape
        return (n1, n0), _SwappedReader(self._engine)

    @property
    def T(self) -> LazyArray:
        return self._original

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(reversed(self._engine.block_shape))

    def _engine_axis(self, axis: int | None) -> int | None:
        return None if axis is None else 1 - axis

    def _reduce(self, name: str, axis: Any, unsupported: dict[str, Any], **opts: Any) -> Any:
        if axis is not None or name not in ("argmin", "argmax"):
            return super()._reduce(name, axis, unsupported, **opts)
        # the first extreme in the transposed order: the first column of the original that
        # holds it, and its first row there
        values = reduce(self._engine, name[3:], 0)
        rows = reduce(self._engine, name, 0)
        j = int(np.argmax(values) if name == "argmax" else np.argmin(values))
        flat = np.intp(j * self.shape[1] + int(rows[j]))
        return super()._reduce_result(name, flat, None, **opts)

    def top_k(self, k: int, axis: int = 1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``top_k`` of the transposed array (see ``InfluenceArray.top_k``)."""
        values, indices = top_k(self._engine, k, axis=1 - normalize_axis(axis), largest=largest)
        return values.T.copy(), indices.T.copy()

    def __repr__(self) -> str:
        return f"{self._original!r}.T"


class _SwappedReader:
    """Reads the transposed array from the engine of the original."""

    def __init__(self, engine: BlockEngine) -> None:
        self._engine = engine

    def read_outer(self, rows: Any, cols: Any) -> np.ndarray:
        return np.ascontiguousarray(self._engine.read_outer(cols, rows).T)

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._engine.read_points(cols, rows)
