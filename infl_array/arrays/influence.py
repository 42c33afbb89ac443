"""``InfluenceArray``: a read-only 2-D array whose blocks are computed once and cached.

A read goes key -> normalised selection (:mod:`infl_array.arrays.indexing`) -> read plan
(:mod:`infl_array.engine.plan`) -> the engine computes the missing blocks, each once, and reads the
selection (:mod:`infl_array.engine.block_engine`) -> zarr (:mod:`infl_array.storage.grid`). This
module holds the array's constructors and its public methods; the work lives in the modules they
delegate to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infl_array.arrays.append import AppendMixin, check_segments, created_shape_of
from infl_array.arrays.describe import DescribedMixin
from infl_array.arrays.front import LazyArray
from infl_array.arrays.indexing import get_oindex
from infl_array.arrays.reduce import to_dask, top_k
from infl_array.arrays.repair import repair_store, store_report
from infl_array.arrays.retest import new_test_source, share_train_factors
from infl_array.arrays.self_influence import SelfInfluenceArray, open_self_influence
from infl_array.arrays.staleness import check_same, same_settings
from infl_array.arrays.top_k import TopKArray, open_top_k_array
from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.budget import default_block_shape
from infl_array.engine.sources import BlockFunction, BlockSource, FunctionSource, capabilities
from infl_array.executors.dispatch import fill_store
from infl_array.storage.factors import DEFAULT_FACTOR_DISK_BUDGET, FactorStore
from infl_array.storage.grid import BlockCoords
from infl_array.storage.integrity import StoreReport
from infl_array.storage.meta import (
    Compression,
    StoreMeta,
    check_chunk_bytes,
    check_shapes,
    clip_block_shape,
)
from infl_array.storage.store import InfluenceStore

__all__ = ["InfluenceArray", "open_array"]

DEFAULT_BLOCK_SHAPE = (256, 4096)


class InfluenceArray(AppendMixin, DescribedMixin, LazyArray):
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

    def __init__(self, engine: BlockEngine) -> None:
        super().__init__(engine, engine.shape)

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
        storage_options: dict[str, Any] | None = None,
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
            ``(n_test, n_train)`` and the block (chunk) shape; a ``block_shape`` larger than
            ``shape`` is clipped to it.
        dtype
            ``"float32"`` (default) or ``"float64"``.
        overwrite
            Replace an existing infl_array store; otherwise ``FileExistsError``.
        compression
            :class:`~infl_array.storage.meta.Compression`; lossless by default.
        storage_options
            fsspec options of a URL store, e.g. ``{"endpoint_url": ..., "key": ...}``.
        """
        source = FunctionSource(fn)
        shape = _as_pair(shape, "shape")
        return cls._new(
            store, source, shape, block_shape, dtype, overwrite, compression, storage_options
        )

    @classmethod
    def create(
        cls,
        store: Any,
        model: Any,
        *,
        test: Any,
        train: Any,
        block_shape: tuple[int, int] | None = None,
        dtype: str = "float32",
        overwrite: bool = False,
        compression: Compression | None = None,
        factor_compression: Compression | None = None,
        memory_budget: int | None = None,
        disk_budget: int | None = None,
        storage_options: dict[str, Any] | None = None,
        factor_budget_bytes: int | None = None,
        factor_disk_budget_bytes: int | None = None,
    ) -> InfluenceArray:
        """A new store of the influence of ``train`` on ``test`` under a fitted ``model``.

        ``model`` is a fitted influence model of :mod:`infl_array.torch`, a fitted pyDVL
        ``InfluenceFunctionModel`` or any object implementing
        :class:`~infl_array.protocol.FactorisedInfluence`. ``test`` and ``train`` are a
        map-style torch ``Dataset``, a tuple ``(x, y)`` of tensors or arrays, or a
        ``DataLoader`` over a map-style dataset.

        Memory: the array's parts (factor memo, decoded blocks, working space, writes in
        flight) draw from one memory budget (:mod:`infl_array.engine.budget`): the backend's
        ``memory_budget`` where it has one (the per-layer backends), else ``memory_budget``
        here (default 4 GiB). ``block_shape=None`` (default) chooses the block shape from what
        the budget has left and the size of one sample's factors (at most ``(256, 4096)``), so
        it works for any model size. ``disk_budget`` bounds the bytes each side's factors may
        take in the store (:mod:`infl_array.storage.factors`; default 8 GiB, 0 keeps them in
        memory only); ``storage_options`` are the fsspec options of a URL store. Needs the
        ``torch`` extra.

        ``factor_compression`` (an :class:`~infl_array.storage.meta.Compression`; None, the
        default, is lossless) rounds every test and train factor to ``keepbits`` mantissa bits,
        a relative error of at most ``2 ** -(keepbits + 1)`` per value, the bound of the
        matrix's ``keepbits`` (``keepbits=7``: bfloat16's precision, under half the bytes read
        per query). It is recorded in the store: ``ia.open`` uses it without being told. The
        matrix is then the product of the rounded factors: every read, ``top_k`` and top-k array
        is exact for those (the values the array gives), and each entry is within
        ``(2 * 2 ** -(keepbits + 1) + 2 ** -(2 * keepbits + 2)) * |t| |g|`` of the product of the
        unrounded factors ``t`` and ``g``.

        Older names, kept for compatibility: ``factor_budget_bytes`` (caps the factor memo
        within the memory budget) and ``factor_disk_budget_bytes`` (``disk_budget``).
        """
        if block_shape is not None:
            _as_pair(block_shape, "block_shape")
        _dtype_name(dtype)
        disk = _disk_budget(disk_budget, factor_disk_budget_bytes)
        InfluenceStore.check_creatable(store, overwrite=overwrite, storage_options=storage_options)
        source = _model_source(model, test, train, memory_budget, factor_budget_bytes)
        assert source.shape is not None
        arr = cls._new(
            store,
            source,
            source.shape,
            block_shape or _default_block_shape(source, source.shape),
            dtype,
            overwrite,
            compression,
            storage_options,
            factor_compression,
        )
        _attach_factor_store(arr._engine, disk)
        return arr

    @classmethod
    def _new(
        cls,
        store: Any,
        source: BlockSource,
        shape: tuple[int, int],
        block_shape: tuple[int, int],
        dtype: str,
        overwrite: bool,
        compression: Compression | None,
        storage_options: dict[str, Any] | None,
        factor_compression: Compression | None = None,
    ) -> InfluenceArray:
        block_shape = clip_block_shape(shape, _as_pair(block_shape, "block_shape"))
        check_chunk_bytes(block_shape, _dtype_name(dtype))
        meta = StoreMeta(
            shape=shape,
            block_shape=block_shape,
            dtype=_dtype_name(dtype),
            computed_by=source.describe(),
            fingerprints=source.fingerprints(),
            compression=compression or Compression(),
            factor_compression=factor_compression,
        )
        opened = InfluenceStore.create(
            store, meta, overwrite=overwrite, storage_options=storage_options
        )
        source.set_output_dtype(np.dtype(meta.dtype))
        return cls(BlockEngine(opened, opened.matrix, source))

    def with_test(
        self,
        test_data: Any,
        store: Any,
        *,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> InfluenceArray:
        """A new array of ``test_data`` against this array's model and train data, in ``store``.

        It reuses the train factors stored with this array and does no train-side work where
        they are stored (:mod:`infl_array.arrays.retest`); block shape, dtype and compression are
        this array's.
        """
        source = new_test_source(self._engine, test_data, store)
        assert source.shape is not None
        meta = self.meta
        new = InfluenceArray._new(
            store,
            source,
            source.shape,
            meta.block_shape,
            meta.dtype,
            overwrite,
            meta.compression,
            storage_options,
            meta.factor_compression,
        )
        share_train_factors(self._engine, new._engine)
        return new

    # ------------------------------------------------------------------ array attributes
    @property
    def shape(self) -> tuple[int, int]:
        return self._engine.shape

    @property
    def block_shape(self) -> tuple[int, int]:
        """Shape of one block (one zarr chunk)."""
        return self._engine.block_shape

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Blocks per axis."""
        return self._engine.grid_shape

    @property
    def meta(self) -> StoreMeta:
        """What the store records about itself (shape, settings, what computed it)."""
        return self._engine.store.meta

    @property
    def can_compute(self) -> bool:
        """Whether missing blocks can be computed (a model or a function is attached)."""
        return self._engine.can_compute

    @property
    def oindex(self) -> _OIndex:
        """Outer (orthogonal) selection, as in zarr: ``arr.oindex[rows, cols]``."""
        return _OIndex(self)

    # ------------------------------------------------------------------ blocks
    def read_block(self, coords: BlockCoords) -> np.ndarray:
        """The values of one block (read-only), computing it first if it is missing."""
        return self._engine.read_block(coords)

    @property
    def computed(self) -> np.ndarray:
        """Boolean array of ``grid_shape``: which blocks are in the store."""
        return self._engine.computed_mask()

    def missing_blocks(self) -> list[BlockCoords]:
        """Blocks not yet in the store, row-major."""
        return self._engine.missing()

    def stored_bytes(self) -> int:
        """Bytes the matrix's blocks take in the store (0 where the store cannot tell)."""
        return self._engine.grid.stored_bytes()

    # ------------------------------------------------------------------ filling and integrity
    def fill(self, progress: bool = True, workers: int | None = None, client: Any = None) -> int:
        """Compute every missing block; returns how many were computed.

        Safe to interrupt (even with SIGKILL) and to run from several processes at once:
        every block is written atomically, and a later ``fill()`` computes only what is
        missing. ``workers=N`` uses N local processes, ``client=`` a ``dask.distributed``
        client (the store must be reachable from its workers).
        """
        self._check_can_compute("fill")
        return fill_store(self._engine, progress=progress, workers=workers, client=client)

    def verify(self, progress: bool = False) -> list[BlockCoords]:
        """Matrix blocks whose stored bytes fail their checksum or do not decode, sorted.

        :meth:`store_report` checks every other array of the store too.
        """
        return self._engine.verify(progress=progress)

    def store_report(self, progress: bool = False) -> StoreReport:
        """Check every array of the store: the matrix, the self-influence, the stored test
        and train factors, and every claim and note object.

        Returns a :class:`~infl_array.storage.integrity.StoreReport`: per array the blocks
        stored and the damaged ones (``report.damaged``, each naming its array, its block
        and its key), ``report.ok`` when nothing is damaged, ``report.lines()`` for people
        (what ``infl-array verify`` prints). A deleted chunk is not damage: it is a block not
        computed, which the next read or fill computes.
        """
        return store_report(self._engine, progress=progress)

    def repair(self, progress: bool = False) -> list[BlockCoords]:
        """Repair every array of the store; returns the matrix blocks recomputed, which are
        exactly those :meth:`verify` reports.

        Besides the matrix blocks it recomputes the damaged self-influence blocks, deletes
        damaged factor chunks (recomputed when next needed) and damaged claim objects
        (:mod:`infl_array.arrays.repair`); :meth:`store_report` says what it will find.
        """
        self._check_can_compute("repair")
        return repair_store(self._engine, progress=progress)

    def _check_can_compute(self, what: str) -> None:
        if not self.can_compute:
            raise ValueError(
                f"arr.{what}() needs a model or function to compute blocks, but the store "
                f"{self._engine.store.where} was opened without one. Reopen with "
                "ia.open(store, model, test=..., train=...) or ia.open(store, fn=...)."
            )

    # ------------------------------------------------------------------ analysis
    def to_dask(self) -> Any:
        """A ``dask.array.Array`` with one chunk per block, computing missing blocks on touch."""
        return to_dask(self._engine)

    def top_k(self, k: int, axis: int = 1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest (or smallest) values along ``axis`` and their indices.

        Shape ``(n_test, k)`` for ``axis=1``, ``(k, n_train)`` for ``axis=0``; sorted best
        first, ties broken by the lower index. Streams block by block.
        """
        return top_k(self._engine, k, axis=axis, largest=largest)

    def top_k_array(self, k: int, axis: int = 1, largest: bool = True) -> TopKArray:
        """The top-``k`` along ``axis`` of every row, kept in the store (:class:`TopKArray`).

        ``tk.values`` and ``tk.indices`` are ``(n_rows, k)`` (rows: test points for ``axis=1``,
        train points for ``axis=0``); a read computes the row blocks it touches and stores
        them, ``tk.fill()`` the rest. Opened without a model, only stored rows can be read.
        """
        return open_top_k_array(self._engine, k, axis, largest)

    def self_influence(self) -> SelfInfluenceArray:
        """Self-influence of each train point (model-backed arrays), lazy and cached."""
        return open_self_influence(self._engine)

    # ------------------------------------------------------------------ pickling (workers)
    def __getstate__(self) -> dict[str, Any]:
        return {"engine": self._engine}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["engine"])  # type: ignore[misc]


class _OIndex:
    def __init__(self, arr: InfluenceArray) -> None:
        self._arr = arr

    def __getitem__(self, key: Any) -> Any:
        arr = self._arr
        return get_oindex(arr.shape, arr.dtype, key, arr._engine, arr.materialize_limit_bytes)

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
    factor_compression: Compression | None = None,
    memory_budget: int | None = None,
    disk_budget: int | None = None,
    storage_options: dict[str, Any] | None = None,
    factor_budget_bytes: int | None = None,
    factor_disk_budget_bytes: int | None = None,
) -> InfluenceArray:
    """Open an existing store.

    ``ia.open(store)`` is read-only and needs no model: reading a block never computed raises
    :class:`~infl_array.errors.MissingBlockError`. ``ia.open(store, model, test=..., train=...)``
    or ``ia.open(store, fn=fn)`` can compute missing blocks. Whatever is given must match what
    the store was created with (model parameters, data, backend settings, ``block_shape``,
    ``dtype``, ``factor_compression``), else :class:`~infl_array.errors.StaleCacheError` names
    what differs; the factor compression recorded at ``create`` applies without being given.
    ``storage_options`` are the fsspec options of a URL store (credentials, endpoint);
    ``memory_budget``, ``disk_budget`` (and their older names ``factor_budget_bytes``,
    ``factor_disk_budget_bytes``) are as for :meth:`InfluenceArray.create`.
    """
    _check_open_args(model, test, train, fn)
    disk = _disk_budget(disk_budget, factor_disk_budget_bytes)
    computing = model is not None or fn is not None
    opened = InfluenceStore.open(store, read_only=not computing, storage_options=storage_options)
    meta = opened.meta
    given: dict[str, tuple[Any, Any]] = {}
    if block_shape is not None:
        created = created_shape_of(opened)  # blocks were clipped to the shape at creation
        asked = clip_block_shape(created, _as_pair(block_shape, "block_shape"))
        given["block_shape"] = (list(clip_block_shape(created, meta.block_shape)), list(asked))
    if dtype is not None:
        given["dtype"] = (meta.dtype, _dtype_name(dtype))
    if factor_compression is not None:
        given["factor_compression"] = (
            _compression_json(meta.factor_compression),
            _compression_json(_check_compression(factor_compression, "factor_compression")),
        )
    kind = meta.computed_by.get("kind", "function")
    source: BlockSource | None = None
    if model is not None:
        source = _model_source(model, test, train, memory_budget, factor_budget_bytes)
        stored = dict(meta.fingerprints)
        for name, value in source.fingerprints().items():
            if name in stored or name in ("model", "backend", "test", "train"):
                given[name] = (stored.get(name), value)  # what older stores lack is not asked
        given["backend"] = (same_settings(*given["backend"]), given["backend"][1])
        given["shape"] = (list(meta.shape), list(source.shape or ()))
        check_segments(opened, source, given)
        check_same(opened, given, kind_given="model", kind_stored=kind)
        source.set_output_dtype(np.dtype(meta.dtype))
    elif fn is not None:
        check_same(opened, given, kind_given="function", kind_stored=kind)
        source = FunctionSource(fn)
    else:
        check_same(opened, given, kind_given=None, kind_stored=kind)
    engine = BlockEngine(opened, opened.matrix, source)
    _attach_factor_store(engine, disk)
    return InfluenceArray(engine)


def _check_open_args(model: Any, test: Any, train: Any, fn: Any) -> None:
    """``TypeError`` unless :func:`open_array` was given a model with both data sets, a
    callable ``fn``, or neither."""
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


def _attach_factor_store(engine: BlockEngine, disk_budget: int) -> None:
    """Let a source with factors keep them in the store (see :mod:`infl_array.storage.factors`)."""
    reuse = capabilities(engine.source).factor_reuse
    if reuse is not None:
        reuse.attach(FactorStore(engine.store, disk_budget))


def _disk_budget(disk_budget: int | None, factor_disk_budget_bytes: int | None) -> int:
    """The factors' disk budget from ``disk_budget`` or its older name (not both)."""
    if disk_budget is not None and factor_disk_budget_bytes is not None:
        raise TypeError(
            "pass disk_budget or its older name factor_disk_budget_bytes, not both (they are "
            "the same setting)."
        )
    given = disk_budget if disk_budget is not None else factor_disk_budget_bytes
    return DEFAULT_FACTOR_DISK_BUDGET if given is None else given


def _default_block_shape(source: BlockSource, shape: tuple[int, int]) -> tuple[int, int]:
    """A model-backed store's block shape, chosen from its memory budget and factor sizes
    (:func:`~infl_array.engine.budget.default_block_shape`); :data:`DEFAULT_BLOCK_SHAPE` for
    a source without factors."""
    reuse = capabilities(source).factor_reuse
    if reuse is None:
        return DEFAULT_BLOCK_SHAPE
    return default_block_shape(shape, reuse.factor_row_bytes(), reuse.budget, DEFAULT_BLOCK_SHAPE)


def _model_source(
    model: Any,
    test: Any,
    train: Any,
    memory_budget: int | None = None,
    factor_budget_bytes: int | None = None,
) -> BlockSource:
    """The block source of an influence model (the ``torch`` extra)."""
    try:
        from infl_array.torch.source.source import make_block_source
    except ImportError as exc:
        if exc.name != "torch":
            raise
        raise ImportError(
            "computing influence from a model needs torch, which is not installed: install "
            "the torch extra, pip install 'infl_array[torch]' (with torch==2.13.0 first for "
            "the CPU build). Opening and reading existing stores works without it.",
            name=exc.name,
        ) from exc
    return make_block_source(
        model,
        test,
        train,
        memory_budget=memory_budget,
        factor_budget_bytes=factor_budget_bytes,
    )


def _as_pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        raise TypeError(f"{name} must be a pair of ints (n_test, n_train); got {value!r}.")
    value = tuple(value) if isinstance(value, list | tuple) else value
    check_shapes(value, (1, 1)) if name == "shape" else check_shapes((1, 1), value)
    return (int(value[0]), int(value[1]))


def _check_compression(value: Any, name: str) -> Compression:
    if not isinstance(value, Compression):
        raise TypeError(
            f"{name} must be None or an ia.Compression; got {value!r}. Pass e.g. "
            f"{name}=ia.Compression(keepbits=7)."
        )
    return value


def _compression_json(value: Compression | None) -> dict[str, Any]:
    """What of a factor compression is compared at open: its rounding, which decides the
    values (the codec decides only the bytes); None is lossless."""
    return {"keepbits": "None (lossless)" if value is None else value.keepbits}


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
