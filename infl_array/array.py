"""``InfluenceArray``: a read-only 2-D array whose blocks are computed once and cached.

A read goes key -> normalised selection (:mod:`infl_array.indexing`) -> touched blocks
(:mod:`infl_array.plan`) -> compute the missing ones, each once (:mod:`infl_array.compute`)
-> one zarr read of the selection (:mod:`infl_array.store`). Which blocks are computed is learnt
from the store and remembered: a block once seen in the store stays there, so only blocks not
yet seen are looked up again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from infl_array import indexing
from infl_array.cache import SMALL_READ_BLOCKS, BlockCache, assemble_outer, assemble_points
from infl_array.compute import BlockFunction, call_block_function
from infl_array.errors import MissingBlockError, StaleCacheError
from infl_array.plan import BlockCoords, outer_blocks, point_blocks
from infl_array.store import BlockStore, Compression, StoreMeta

DEFAULT_BLOCK_SHAPE = (256, 4096)
# Above this many unknown blocks one listing of the store is cheaper than one check each.
_LIST_THRESHOLD = 32


def _default_materialize_limit() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class InfluenceArray:
    """A lazily computed, cached influence matrix of shape ``(n_test, n_train)``.

    Create one with :meth:`create` (from an influence model) or :meth:`from_function`, or
    reopen a store with :func:`infl_array.open`. Index it like a numpy array; only the blocks
    a read touches are computed, each once, and written to the store for every later read.

    Examples
    --------
    >>> import numpy as np, infl_array as ia
    >>> fn = lambda rows, cols: np.add.outer(np.asarray(rows), np.asarray(cols))
    >>> arr = ia.InfluenceArray.from_function({}, fn, shape=(5, 7), block_shape=(2, 3))
    >>> arr[1:3, -1].tolist()
    [7.0, 8.0]
    >>> int(arr.computed.sum())
    2
    """

    __array_priority__ = 10.0

    def __init__(
        self,
        block_store: BlockStore,
        fn: BlockFunction | None = None,
        *,
        source: Any = None,
        store_spec: Any = None,
    ) -> None:
        self._store = block_store
        self._fn = fn
        self._source = source
        self._store_spec = store_spec
        self._known: set[BlockCoords] = set()
        self._compute_lock = threading.Lock()
        self.blocks_computed = 0
        """Blocks this object computed (and wrote) so far."""
        self.materialize_limit_bytes = _default_materialize_limit()
        """``np.asarray(arr)`` refuses matrices larger than this (default: half the RAM)."""
        self.block_cache = BlockCache()
        """Decoded blocks for small reads (see :mod:`infl_array.cache`); ``max_bytes=0`` off."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_function(
        cls,
        store: Any,
        fn: BlockFunction,
        shape: tuple[int, int],
        block_shape: tuple[int, int] = DEFAULT_BLOCK_SHAPE,
        dtype: str = "float32",
        overwrite: bool = False,
        compression: Compression | None = None,
    ) -> InfluenceArray:
        """A new store whose blocks ``fn(rows: range, cols: range)`` computes on demand.

        Parameters
        ----------
        store
            A local directory path (the default case), an fsspec URL, or a zarr Store.
        fn
            Called as ``fn(rows, cols)`` with two ``range`` objects; returns an array of shape
            ``(len(rows), len(cols))`` (numpy, torch or array-like), finite, real.
        shape, block_shape
            ``(n_test, n_train)`` and the block (chunk) shape.
        dtype
            ``"float32"`` (default) or ``"float64"``.
        overwrite
            Replace an existing infl_array store; otherwise ``FileExistsError``.
        compression
            :class:`~infl_array.store.Compression`; lossless by default.
        """
        if not callable(fn):
            raise TypeError(
                f"fn must be callable as fn(rows: range, cols: range); got {type(fn).__name__}."
            )
        meta = StoreMeta(
            shape=_as_pair(shape, "shape"),
            block_shape=_as_pair(block_shape, "block_shape"),
            dtype=_dtype_name(dtype),
            computed_by={"kind": "function", "name": _qualname(fn)},
            compression=compression or Compression(),
        )
        block_store = BlockStore.create(store, meta, overwrite=overwrite)
        return cls(block_store, fn, store_spec=store)

    @classmethod
    def create(
        cls,
        store: Any,
        model: Any,
        *,
        test: Any,
        train: Any,
        block_shape: tuple[int, int] = DEFAULT_BLOCK_SHAPE,
        dtype: str = "float32",
        overwrite: bool = False,
        compression: Compression | None = None,
        factor_budget_bytes: int = 1 << 30,
    ) -> InfluenceArray:
        """A new store of the influence of ``train`` on ``test`` under a fitted ``model``.

        ``model`` is a fitted backend of :mod:`infl_array.torch`, a fitted pyDVL
        ``InfluenceFunctionModel`` or any object implementing
        :class:`~infl_array.protocol.FactorisedInfluence`. ``test`` and ``train`` are a
        map-style torch ``Dataset``, a tuple ``(x, y)`` of tensors or arrays, or a
        ``DataLoader`` over a map-style dataset. ``factor_budget_bytes`` bounds the memory
        used to reuse per-sample factors across blocks.
        """
        meta_settings = (_as_pair(block_shape, "block_shape"), _dtype_name(dtype))
        BlockStore.check_creatable(store, overwrite=overwrite)
        source = _make_source(model, test, train, factor_budget_bytes)
        meta = StoreMeta(
            shape=(source.n_test, source.n_train),
            block_shape=meta_settings[0],
            dtype=meta_settings[1],
            computed_by=source.describe(),
            fingerprints=source.fingerprints(),
            compression=compression or Compression(),
        )
        block_store = BlockStore.create(store, meta, overwrite=overwrite)
        source.set_output_dtype(meta.dtype)
        return cls(block_store, source, source=source, store_spec=store)

    # ------------------------------------------------------------------ array attributes
    @property
    def shape(self) -> tuple[int, int]:
        return self._store.meta.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._store.meta.dtype)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def block_shape(self) -> tuple[int, int]:
        return self._store.meta.block_shape

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self._store.meta.grid_shape

    @property
    def meta(self) -> StoreMeta:
        """What the store records about itself (shape, settings, what computed it)."""
        return self._store.meta

    @property
    def can_compute(self) -> bool:
        """Whether missing blocks can be computed (a model or a function is attached)."""
        return self._fn is not None

    def __len__(self) -> int:
        return self.shape[0]

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key: Any) -> Any:
        return indexing.getitem(self.shape, self.dtype, key, self._reader())

    @property
    def oindex(self) -> _OIndex:
        """Outer (orthogonal) selection, as in zarr: ``arr.oindex[rows, cols]``."""
        return _OIndex(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(
            "InfluenceArray is read-only: its values are computed, not assigned. "
            "Copy a slice to numpy first (np.asarray(arr[...])) to modify values."
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                "np.asarray(arr, copy=False) is impossible: an InfluenceArray is computed and "
                "stored compressed, so a numpy array of it is always a new copy. "
                "Use copy=None (the default) or copy=True."
            )
        if self.nbytes > self.materialize_limit_bytes:
            raise MemoryError(
                f"refusing to materialise the whole {self.shape[0]} x {self.shape[1]} matrix: "
                f"{self.nbytes / 2**30:.1f} GiB exceeds materialize_limit_bytes "
                f"({self.materialize_limit_bytes / 2**30:.1f} GiB). Read a slice "
                "(arr[rows, cols]), use arr.top_k(...) or arr.to_dask(), or raise "
                "arr.materialize_limit_bytes on purpose."
            )
        out = np.asarray(self[:, :])
        return out if dtype is None else out.astype(dtype, copy=False)

    def _reader(self) -> _BlockReader:
        return _BlockReader(self)

    def read_block(self, coords: BlockCoords) -> np.ndarray:
        """The values of one block (read-only), computing it first if it is missing.

        Streams (reductions, dask) use this: a block already in the cache is taken from it,
        others are decoded without filling the cache.
        """
        self.ensure_blocks([coords])
        cached = self.block_cache.get(coords)
        return cached if cached is not None else self._store.read_block(coords)

    def _cached_block(self, coords: BlockCoords) -> np.ndarray:
        block = self.block_cache.get(coords)
        if block is None:
            block = self._store.read_block(coords)
            self.block_cache.put(coords, block)
        return block

    def _remember_computed(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Cache freshly computed values, when they are exactly what the store holds."""
        if self.meta.compression.keepbits is None:
            self.block_cache.put(coords, values)

    # ------------------------------------------------------------------ blocks
    def ensure_blocks(self, blocks: Iterable[BlockCoords]) -> int:
        """Make sure every block in ``blocks`` is in the store; returns how many it computed."""
        unknown = [b for b in blocks if b not in self._known]
        if not unknown:
            return 0
        if len(unknown) > _LIST_THRESHOLD:
            self._known |= self._store.list_computed()
        else:
            self._known |= self._store.has_blocks(unknown)
        missing = [b for b in dict.fromkeys(unknown) if b not in self._known]
        if not missing:
            return 0
        self._require_source(missing)
        self._store.check_writable(missing[0])
        from infl_array.executor import compute_blocks

        # threads of one process (dask's threaded scheduler, say) compute a block once
        with self._compute_lock:
            return compute_blocks(self, [b for b in missing if b not in self._known])

    def compute_block(self, coords: BlockCoords) -> None:
        """Compute one block and write it to the store (whether or not it was there)."""
        values = self._block_values(coords)
        self._store.write_block(coords, values)
        self._mark_computed(coords)
        self._remember_computed(coords, values)

    def _block_values(self, coords: BlockCoords) -> np.ndarray:
        """The checked values of one block from the model or function (nothing is written)."""
        self._require_source([coords])
        assert self._fn is not None
        rows, cols = self._store.block_bounds(coords)
        return call_block_function(
            self._fn,
            coords,
            range(rows.start, rows.stop),
            range(cols.start, cols.stop),
            self.dtype,
        )

    def _mark_computed(self, coords: BlockCoords, by_us: bool = True) -> None:
        self._known.add(coords)
        self.blocks_computed += by_us

    def _require_source(self, missing: list[BlockCoords]) -> None:
        if self._fn is not None:
            return
        first = missing[0]
        rows, cols = self._store.block_bounds(first)
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise MissingBlockError(
            first,
            f"block {first} (test rows {rows.start}:{rows.stop}, train cols "
            f"{cols.start}:{cols.stop}){more} is not in the store {self._store.where}, which was "
            "opened without a model or function, so it cannot be computed. Reopen with "
            "ia.open(store, model, test=..., train=...) or ia.open(store, fn=...) and read "
            "again or call arr.fill().",
        )

    def _refresh_known(self) -> set[BlockCoords]:
        self._known = self._store.list_computed()
        return self._known

    @property
    def computed(self) -> np.ndarray:
        """Boolean array of ``grid_shape``: which blocks are in the store."""
        out = np.zeros(self.grid_shape, dtype=bool)
        known = self._refresh_known()
        if known:
            idx = np.array(sorted(known), dtype=np.int64)
            out[idx[:, 0], idx[:, 1]] = True
        return out

    def missing_blocks(self) -> list[BlockCoords]:
        """Blocks not yet in the store, row-major."""
        known = self._refresh_known()
        return [
            (i, j)
            for i in range(self.grid_shape[0])
            for j in range(self.grid_shape[1])
            if (i, j) not in known
        ]

    # ------------------------------------------------------------------ filling and integrity
    def fill(self, progress: bool = True, workers: int | None = None, client: Any = None) -> int:
        """Compute every missing block; returns how many were computed.

        Safe to interrupt (even with SIGKILL) and to run from several processes at once:
        every block is written atomically, and a later ``fill()`` computes only what is
        missing. ``workers=N`` uses N local processes, ``client=`` a ``dask.distributed``
        client (the store must be reachable from its workers).
        """
        from infl_array.fill import fill

        self._check_can_compute("fill")
        return fill(self, progress=progress, workers=workers, client=client)

    def verify(self, progress: bool = False) -> list[BlockCoords]:
        """Blocks whose stored bytes fail their checksum or do not decode, sorted."""
        from infl_array.fill import progress_bar

        blocks = sorted(self._refresh_known())
        bar = progress_bar(blocks, progress, "verify")
        return [c for c in bar if not self._store.verify_block(c)]

    def repair(self, progress: bool = False) -> list[BlockCoords]:
        """Recompute exactly the blocks :meth:`verify` reports; returns them."""
        self._check_can_compute("repair")
        bad = self.verify(progress=progress)
        if bad:
            self._store.check_writable(bad[0])
        for coords in bad:
            self.compute_block(coords)
        return bad

    def _check_can_compute(self, what: str) -> None:
        if self._fn is None:
            raise ValueError(
                f"arr.{what}() needs a model or function to compute blocks, but the store "
                f"{self._store.where} was opened without one. Reopen with "
                "ia.open(store, model, test=..., train=...) or ia.open(store, fn=...)."
            )

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        known = self._refresh_known()
        n_blocks = self.grid_shape[0] * self.grid_shape[1]
        stored = self._store.stored_bytes()
        raw = sum(_block_bytes(self, c) for c in known)
        ratio = f"{raw / stored:.2f}x" if stored else "n/a"
        by = self.meta.computed_by
        backend = by.get("backend") or by.get("name") or by.get("kind", "?")
        mode = "computes missing blocks" if self.can_compute else "read-only"
        return (
            f"InfluenceArray(shape={self.shape}, dtype={self.dtype}, "
            f"block_shape={self.block_shape}, blocks computed {len(known)}/{n_blocks} "
            f"({100 * len(known) / n_blocks:.1f}%), stored {_fmt_bytes(stored)}, "
            f"compression ratio {ratio}, backend={backend}, {mode}, "
            f"store={self._store.where})"
        )

    # ------------------------------------------------------------------ analysis
    def to_dask(self) -> Any:
        """A ``dask.array.Array`` with one chunk per block, computing missing blocks on touch."""
        from infl_array.reduce import to_dask

        return to_dask(self)

    def top_k(self, k: int, axis: int = 1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest (or smallest) values along ``axis`` and their indices.

        Shape ``(n_test, k)`` for ``axis=1``, ``(k, n_train)`` for ``axis=0``; sorted best
        first, ties broken by the lower index. Streams block by block.
        """
        from infl_array.reduce import top_k

        return top_k(self, k, axis=axis, largest=largest)

    def sum(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "sum", axis)

    def mean(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "mean", axis)

    def min(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "min", axis)

    def max(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "max", axis)

    def argmin(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "argmin", axis)

    def argmax(self, axis: int | None = None) -> Any:
        from infl_array.reduce import reduce

        return reduce(self, "argmax", axis)

    def self_influence(self) -> Any:
        """Self-influence of each train point (model-backed arrays), lazy and cached."""
        from infl_array.self_influence import self_influence

        return self_influence(self)

    # ------------------------------------------------------------------ pickling (workers)
    def __getstate__(self) -> dict[str, Any]:
        if _is_process_local(self._store_spec):
            raise TypeError(
                "this InfluenceArray lives in an in-process store and cannot be sent to other "
                "processes; use a directory path or URL as the store for workers or dask."
            )
        return {"store": self._store_spec, "fn": self._fn, "source": self._source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        block_store = BlockStore.open(state["store"], read_only=state["fn"] is None)
        self.__init__(  # type: ignore[misc]
            block_store, state["fn"], source=state["source"], store_spec=state["store"]
        )


class _BlockReader:
    """The :class:`~infl_array.indexing.Reader` of an InfluenceArray: compute, then read."""

    def __init__(self, arr: InfluenceArray) -> None:
        self._arr = arr

    def _from_cache(self, blocks: list[BlockCoords]) -> bool:
        cache = self._arr.block_cache
        if cache.max_bytes <= 0:
            return False
        return len(blocks) <= SMALL_READ_BLOCKS or all(b in cache for b in blocks)

    def read_outer(self, rows: indexing.AxisSel, cols: indexing.AxisSel) -> np.ndarray:
        arr = self._arr
        blocks = outer_blocks(rows, cols, arr.block_shape)
        arr.ensure_blocks(blocks)
        if self._from_cache(blocks):
            shape = (indexing.axis_len(rows), indexing.axis_len(cols))
            return assemble_outer(
                rows, cols, shape, blocks, arr._store.block_bounds, arr._cached_block, arr.dtype
            )
        return arr._store.read_region((rows, cols), blocks)

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        arr = self._arr
        blocks = point_blocks(rows, cols, arr.block_shape)
        arr.ensure_blocks(blocks)
        if self._from_cache(blocks):
            return assemble_points(
                rows, cols, arr.block_shape, blocks, arr._cached_block, arr.dtype
            )
        return arr._store.read_coordinates(rows, cols, blocks)


class _OIndex:
    def __init__(self, arr: InfluenceArray) -> None:
        self._arr = arr

    def __getitem__(self, key: Any) -> Any:
        return indexing.get_oindex(self._arr.shape, self._arr.dtype, key, self._arr._reader())

    def __setitem__(self, key: Any, value: Any) -> None:
        self._arr[key] = value  # raises TypeError: read-only


# ---------------------------------------------------------------------- opening
def open_array(
    store: Any,
    model: Any = None,
    *,
    test: Any = None,
    train: Any = None,
    fn: BlockFunction | None = None,
    block_shape: tuple[int, int] | None = None,
    dtype: str | None = None,
    factor_budget_bytes: int = 1 << 30,
) -> InfluenceArray:
    """Open an existing store.

    ``ia.open(store)`` is read-only and needs no model: reading a block never computed raises
    :class:`~infl_array.errors.MissingBlockError`. ``ia.open(store, model, test=..., train=...)``
    or ``ia.open(store, fn=fn)`` can compute missing blocks. Whatever is given must match what
    the store was created with (model parameters, data, backend settings, ``block_shape``,
    ``dtype``), else :class:`~infl_array.errors.StaleCacheError` names what differs.
    """
    if model is not None and fn is not None:
        raise TypeError(
            "pass either a model (with test= and train=) or fn=, not both; the store records "
            "which one computed it."
        )
    if model is None and (test is not None or train is not None):
        raise TypeError(
            "test= and train= were given without a model; pass the model as the second "
            "argument: ia.open(store, model, test=..., train=...)."
        )
    if model is not None and (test is None or train is None):
        raise TypeError(
            "opening with a model needs both data sets: ia.open(store, model, test=..., train=...)."
        )
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable as fn(rows, cols); got {type(fn).__name__}.")
    computing = model is not None or fn is not None
    block_store = BlockStore.open(store, read_only=not computing)
    meta = block_store.meta
    given: dict[str, tuple[Any, Any]] = {}
    if block_shape is not None:
        given["block_shape"] = (list(meta.block_shape), list(_as_pair(block_shape, "block_shape")))
    if dtype is not None:
        given["dtype"] = (meta.dtype, _dtype_name(dtype))
    kind = meta.computed_by.get("kind", "function")
    if model is not None:
        source = _make_source(model, test, train, factor_budget_bytes)
        stored = dict(meta.fingerprints)
        for name, value in source.fingerprints().items():
            given[name] = (stored.get(name), value)
        given["shape"] = (list(meta.shape), [source.n_test, source.n_train])
        _check_same(block_store, given, kind_given="model", kind_stored=kind)
        source.set_output_dtype(meta.dtype)
        return InfluenceArray(block_store, source, source=source, store_spec=store)
    if fn is not None:
        _check_same(block_store, given, kind_given="function", kind_stored=kind)
        return InfluenceArray(block_store, fn, store_spec=store)
    _check_same(block_store, given, kind_given=None, kind_stored=kind)
    return InfluenceArray(block_store, None, store_spec=store)


def _check_same(
    block_store: BlockStore,
    given: dict[str, tuple[Any, Any]],
    kind_given: str | None,
    kind_stored: str,
) -> None:
    differ = [name for name, (stored, now) in given.items() if stored != now]
    details = [
        f"{name}: store has {_short(given[name][0])}, given {_short(given[name][1])}"
        for name in differ
    ]
    if kind_given is not None and kind_given != kind_stored:
        differ.insert(0, "computed_by")
        details.insert(
            0, f"computed_by: the store was computed by a {kind_stored}, given a {kind_given}"
        )
    if differ:
        raise StaleCacheError(
            differ,
            f"the store {block_store.where} was created with a different "
            f"{', '.join(differ)} than given ({'; '.join(details)}). Its blocks would not "
            "match; open it with the original model, data and settings, or create a new store "
            "(or pass overwrite=True to create(...) to recompute).",
        )


def _is_process_local(store: Any) -> bool:
    """Whether a store lives only in this process (so other processes cannot share it)."""
    import zarr

    return (
        store is None
        or isinstance(store, dict | zarr.storage.MemoryStore)
        or (isinstance(store, str) and store.startswith("memory://"))
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def _make_source(model: Any, test: Any, train: Any, factor_budget_bytes: int) -> Any:
    from infl_array.torch.source import make_block_source

    return make_block_source(model, test, train, factor_budget_bytes=factor_budget_bytes)


def _as_pair(value: Any, name: str) -> tuple[int, int]:
    from infl_array.store import check_shapes

    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        raise TypeError(f"{name} must be a pair of ints (n_test, n_train); got {value!r}.")
    value = tuple(value) if isinstance(value, list | tuple) else value
    check_shapes(value, (1, 1)) if name == "shape" else check_shapes((1, 1), value)
    return (int(value[0]), int(value[1]))


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(
            f'dtype must be "float32" or "float64"; got {dtype!r}. Pass dtype="float32".'
        ) from exc
    if name not in ("float32", "float64"):
        raise TypeError(f'dtype must be "float32" or "float64"; got {dtype!r}.')
    return name


def _qualname(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


def _block_bytes(arr: InfluenceArray, coords: BlockCoords) -> int:
    rows, cols = arr._store.block_bounds(coords)
    return (rows.stop - rows.start) * (cols.stop - cols.start) * arr.dtype.itemsize


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
