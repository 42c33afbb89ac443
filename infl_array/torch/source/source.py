"""Block sources for model-backed influence arrays.

:func:`make_block_source` turns an influence model and two data sets into a
:class:`ModelBlockSource`, the :class:`~infl_array.engine.sources.BlockSource` the engine calls to
compute one block of the influence matrix::

    source = make_block_source(model, test=test_data, train=train_data)
    block = source.compute_block(range(0, 256), range(0, 4096))  # numpy, (256, 4096)

Contract
--------
* ``source.compute_block(rows, cols)`` returns a C-contiguous host numpy array of shape
  ``(len(rows), len(cols))`` equal to ``test_factors(test[rows]) @ train_factors(train[cols]).T``.
  The product is computed on the device the factors live on (the model's device), in float64,
  and the result is moved to the CPU. Factors are per sample and the product is taken in
  float64, so an entry does not depend (beyond float64 rounding) on the block it is computed in.
  Exception: after ``set_output_dtype("float32")`` (a float32 store), float32 factors are
  multiplied in float32 and the block is float32 (its values are rounded to float32 anyway).
* :meth:`ModelBlockSource.fingerprints` returns exactly the keys ``"model"``, ``"backend"``,
  ``"test"`` and ``"train"``: ``model_fingerprint()`` (or, for a plug-in without it, a sha256 of
  the canonical config), the canonical JSON (``sort_keys``) of ``influence_config()``, and the
  data fingerprints of :func:`infl_array.torch.data.views.as_indexed`.
* :meth:`ModelBlockSource.describe` returns ``{"kind": "model", "backend": <class name>,
  "config": influence_config()}`` (JSON-able).
* :meth:`ModelBlockSource.compute_diagonal` returns the 1-D float64 self-influence
  ``grad^T (H + lambda Id)^-1 grad`` of ``train[cols]``.
* Capabilities (:mod:`infl_array.engine.sources`): ``factor_reuse`` (the factor memo below) and
  ``diagonal`` (the self-influence) are the source itself.

Accepted models
---------------
* Any object implementing :class:`~infl_array.protocol.FactorisedInfluence` (the influence
  models of :mod:`infl_array.torch` or a user's plug-in; factors may be torch tensors or numpy
  arrays; ``model_fingerprint()`` is optional). An object with an ``is_fitted`` attribute that
  is false is rejected with :class:`ValueError`.
* A fitted pyDVL ``InfluenceFunctionModel`` (duck-typed, see :mod:`infl_array.torch.source.pydvl`):
  its test factors come from ``influence_factors`` and each block from
  ``influences_from_factors(..., mode=InfluenceMode.Up)``; pyDVL exposes no train factors, so
  only test factors are memoised for it.

Factor memo
-----------
Test factors per test range and train factors per train range are memoised, keyed by
``(axis, start, stop)`` with axis ``"test"``, ``"train"`` or ``"self"`` (test factors of train
points, for the self-influence), in an LRU memo bounded by ``factor_budget_bytes`` (default
1 GiB). A request for a range inside a memoised range is served by slicing it. The memo keeps
tensors where the influence model returned them (the model's device; numpy factors become CPU
tensors), in its dtype. A factor larger than the whole budget is not kept, and older entries are
evicted by bytes, so a too-small budget only costs recomputation. :attr:`ModelBlockSource.stats`
counts factor computations, memo hits and evictions. The memo is not pickled: a source sent to
a worker process starts with an empty memo. Access is serialised by a lock, so concurrent
threads compute each factor once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from infl_array.storage.factors import SIDES as FACTOR_SIDES
from infl_array.storage.factors import FactorStore
from infl_array.torch.data.views import IndexedData, as_indexed
from infl_array.torch.source.adapters import ModelAdapter, ProtocolAdapter, check_fitted
from infl_array.torch.source.memo import FactorMemo
from infl_array.torch.source.pydvl import PyDVLAdapter, is_pydvl_model

__all__ = ["DEFAULT_FACTOR_BUDGET_BYTES", "ModelBlockSource", "make_block_source"]

DEFAULT_FACTOR_BUDGET_BYTES = 1 << 30
"""Default byte budget of the factor memo (1 GiB)."""


def canonical_json(config: Mapping[str, Any], what: str = "influence_config()") -> str:
    """Canonical JSON of a config: sorted keys, no whitespace; TypeError if not JSON-able."""
    try:
        return json.dumps(dict(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must return a JSON-able mapping (str keys; str, int, float, bool, None, "
            f"lists and dicts of them), got {config!r}: {exc}. Convert tensors and enums to "
            "plain values."
        ) from exc


def as_adapter(model: object) -> ModelAdapter:
    """Wrap ``model`` in the adapter for its kind (protocol or pyDVL)."""
    if all(callable(getattr(model, m, None)) for m in ("test_factors", "train_factors")) and (
        callable(getattr(model, "influence_config", None))
    ):
        check_fitted(model)
        return ProtocolAdapter(model)
    if is_pydvl_model(model):
        return PyDVLAdapter(model)
    raise TypeError(
        f"model must be an influence model: an object implementing the factorised protocol "
        f"(test_factors, train_factors, influence_config; e.g. infl_array.torch.DirectInfluence, "
        f"CgInfluence, LissaInfluence, ArnoldiInfluence) or a fitted pyDVL "
        f"InfluenceFunctionModel; got {type(model).__module__}.{type(model).__qualname__}. "
        "For a plain block function use InfluenceArray.from_function."
    )


def _aligned(r: range, store: FactorStore, axis: str) -> bool:
    """Whether ``r`` covers whole factor blocks of ``axis``."""
    length, n = store.block_len(axis), store.n(axis)
    return r.start % length == 0 and (r.stop % length == 0 or r.stop == n) and len(r) > 0


def _ends(r: range) -> tuple[int, int]:
    return r.start, r.stop


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive block indices."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def _check_range(r: object, n: int, what: str) -> range:
    if not isinstance(r, range):
        raise TypeError(f"{what} must be a range, got {type(r).__name__}.")
    if r.step != 1 or r.start < 0 or r.stop > n or r.start > r.stop:
        raise IndexError(f"{what} must be a contiguous range inside [0, {n}] with step 1, got {r}.")
    return r


class ModelBlockSource:
    """Block function of a model-backed influence array (see the module docstring).

    Parameters
    ----------
    adapter : ModelAdapter
        Adapter around the influence model (built by :func:`make_block_source`).
    test, train : IndexedData
        Test and train data.
    factor_budget_bytes : int
        Byte budget of the factor memo.

    Attributes
    ----------
    n_test, n_train : int
        Number of test and train points (the matrix shape).
    stats : dict of str to int
        ``"test_factors"``, ``"train_factors"``, ``"self_factors"``: factor computations
        (calls to the influence model); ``"hits"``: requests served by the memo. See also
        :attr:`memo_bytes` and :attr:`memo_evictions`.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        test: IndexedData,
        train: IndexedData,
        factor_budget_bytes: int = DEFAULT_FACTOR_BUDGET_BYTES,
    ) -> None:
        self.adapter = adapter
        self.test = test
        self.train = train
        self.n_test = len(test)
        self.n_train = len(train)
        self.factor_budget_bytes = factor_budget_bytes
        self._memo = FactorMemo(factor_budget_bytes)
        self._lock = threading.RLock()
        self._fingerprints: dict[str, str] | None = None
        self._config: dict[str, Any] | None = None
        self._output_float32 = False
        self._factor_store: FactorStore | None = None
        self.stats = {
            "test_factors": 0,
            "train_factors": 0,
            "self_factors": 0,
            "hits": 0,
            "factor_reads": 0,
        }

    # -- pickling: the memo and the lock stay behind -------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # sent to workers (fills only send a source when blocks are missing): the model's
        # deferred fitting work runs once here, not once per worker
        self.adapter.prepare()
        state = self.__dict__.copy()
        state["_memo"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._memo = FactorMemo(self.factor_budget_bytes)
        self._lock = threading.RLock()

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """Class name of the influence model."""
        return self.adapter.name

    def config(self) -> dict[str, Any]:
        """The model's ``influence_config()`` (computed once)."""
        if self._config is None:
            cfg = self.adapter.config()
            canonical_json(cfg, f"{self.model_name}.influence_config()")
            self._config = cfg
        return dict(self._config)

    def fingerprints(self) -> dict[str, str]:
        """Fingerprints of ``"model"``, ``"backend"``, ``"test"`` and ``"train"`` (cached).

        Returns
        -------
        dict of str to str
            ``model``: the model's ``model_fingerprint()`` (sha256 of the config's canonical
            JSON for plug-ins without one); ``backend``: canonical JSON of the config;
            ``test``/``train``: data fingerprints.
        """
        if self._fingerprints is None:
            backend = canonical_json(self.config(), f"{self.model_name}.influence_config()")
            model = self.adapter.model_fingerprint()
            if model is None:
                model = hashlib.sha256(backend.encode()).hexdigest()
            self._fingerprints = {
                "model": model,
                "backend": backend,
                "test": self.test.fingerprint(),
                "train": self.train.fingerprint(),
            }
        return dict(self._fingerprints)

    def notes(self) -> dict[str, str]:
        """What the influence model's solves found so far (its ``diagnostics()``)."""
        return self.adapter.notes()

    def describe(self) -> dict[str, Any]:
        """JSON-able description: ``{"kind": "model", "backend": name, "config": config}``."""
        return {"kind": "model", "backend": self.model_name, "config": self.config()}

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_test, n_train)``."""
        return (self.n_test, self.n_train)

    @property
    def factor_reuse(self) -> ModelBlockSource:
        """Factors are memoised (:class:`~infl_array.engine.sources.FactorReuse`)."""
        return self

    @property
    def diagonal(self) -> ModelBlockSource:
        """Self-influence is available (:class:`~infl_array.engine.sources.DiagonalSource`)."""
        return self

    def __repr__(self) -> str:
        return (
            f"ModelBlockSource(backend={self.model_name}, n_test={self.n_test}, "
            f"n_train={self.n_train}, memo={len(self._memo)} entries/{self._memo.nbytes} B)"
        )

    # -- factors ----------------------------------------------------------------------------
    def attach(self, factor_store: FactorStore | None) -> None:
        """Keep factors in ``factor_store`` (one block of samples per chunk), or in memory only.

        With a factor store, factors are requested by whole blocks: each block is taken from
        the memo, else from the store, else computed (runs of missing blocks in one call, so
        a tile's test factors are one batched solve) and written to the store when its side
        is stored there.
        """
        self._factor_store = factor_store

    @property
    def factor_store(self) -> FactorStore | None:
        """The factor store attached with :meth:`attach` (None: factors in memory only)."""
        return self._factor_store

    def _factor(self, axis: str, r: range) -> torch.Tensor:
        with self._lock:
            store = self._factor_store
            if store is None or axis not in FACTOR_SIDES or not _aligned(r, store, axis):
                return self._factor_range(axis, r)
            return self._factor_blocks(store, axis, r)

    def _factor_range(self, axis: str, r: range) -> torch.Tensor:
        """Factors of exactly ``r`` (or a slice of a memoised range holding it)."""
        key = (axis, r.start, r.stop)
        hit = self._memo.get(key)
        if hit is not None:
            self.stats["hits"] += 1
            return hit
        f = self._compute_factors(axis, r)
        self._memo.put(key, f)
        return f

    def _factor_blocks(self, store: FactorStore, axis: str, r: range) -> torch.Tensor:
        """Factors of the whole blocks ``r`` covers: memo, store, or computed in runs."""
        length = store.block_len(axis)
        blocks = range(r.start // length, -(-r.stop // length))
        pieces: dict[int, torch.Tensor] = {}
        for b in blocks:
            span = store.bounds(axis, b)
            hit = self._memo.get((axis, span.start, span.stop))
            if hit is None:
                stored = store.get(axis, b)
                if stored is not None:
                    hit = torch.from_numpy(stored).to(self.adapter.device)
                    self._memo.put((axis, span.start, span.stop), hit)
                    self.stats["factor_reads"] += 1
            else:
                self.stats["hits"] += 1
            if hit is not None:
                pieces[b] = hit
        missing = [b for b in blocks if b not in pieces]
        shared = store.exists(axis)  # once a side is stored, processes claim its blocks
        mine = [b for b in missing if not shared or store.claim(axis, b)]
        try:
            for first, last in _runs(mine):
                self._compute_blocks(store, axis, first, last, pieces)
        finally:
            for b in mine:
                store.release(axis, b)
        for b in missing:
            if b not in pieces:  # claimed by another process: read what it stores
                found = store.wait(axis, b)
                if found is None:  # that process is gone: compute it here
                    try:
                        self._compute_blocks(store, axis, b, b, pieces)
                    finally:
                        store.release(axis, b)
                else:
                    pieces[b] = torch.from_numpy(found).to(self.adapter.device)
                    self._memo.put((axis, *_ends(store.bounds(axis, b))), pieces[b])
                    self.stats["factor_reads"] += 1
        if len(blocks) == 1:
            return pieces[blocks[0]]
        return torch.cat([pieces[b] for b in blocks])

    def _compute_blocks(
        self, store: FactorStore, axis: str, first: int, last: int, pieces: dict[int, torch.Tensor]
    ) -> None:
        """Compute factor blocks ``first..last`` in one call; memoise and store each."""
        span = range(store.bounds(axis, first).start, store.bounds(axis, last).stop)
        f = self._compute_factors(axis, span)
        for b in range(first, last + 1):
            part = store.bounds(axis, b)
            piece = f[part.start - span.start : part.stop - span.start]
            pieces[b] = piece
            self._memo.put((axis, part.start, part.stop), piece)
            store.put(axis, b, piece.detach().cpu().numpy())

    def _compute_factors(self, axis: str, r: range) -> torch.Tensor:
        """Ask the influence model for the factors of ``r`` (counted in :attr:`stats`)."""
        data = self.test if axis == "test" else self.train
        x, y = data.take(r)
        if axis == "train":
            f = self.adapter.train_factors(x, y)
            self.stats["train_factors"] += 1
        else:
            f = self.adapter.test_factors(x, y)
            self.stats["test_factors" if axis == "test" else "self_factors"] += 1
        if f.shape[0] != len(r):
            raise ValueError(
                f"{self.model_name} returned {f.shape[0]} rows of {axis} factors for "
                f"{len(r)} samples; factors need one row per sample."
            )
        return f

    @property
    def memo_bytes(self) -> int:
        """Bytes currently held by the factor memo."""
        return self._memo.nbytes

    @property
    def memo_evictions(self) -> int:
        """Number of memo entries evicted so far."""
        return self._memo.evictions

    def set_output_dtype(self, dtype: Any) -> None:
        """The dtype blocks are stored in: float32 storage keeps float32 products.

        With float64 (the default) every product is taken in float64. With float32, float32
        factors are multiplied in float32 (twice as fast, and the values are rounded to
        float32 when stored anyway); float64 factors still multiply in float64.
        """
        self._output_float32 = bool(np.dtype(dtype) == np.float32)

    def _product_dtype(self, *factors: torch.Tensor) -> torch.dtype:
        if self._output_float32 and all(f.dtype == torch.float32 for f in factors):
            return torch.float32
        return torch.float64

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        """Bytes the test factors of ``test[rows]`` take (the engine sizes tiles with it).

        Measured on factors the tile needs anyway, so sizing costs no extra computation: the
        train factors of ``train[cols]`` when test and train factors share their width (plain
        products), else the test factors of ``test[rows]``. Either is memoised.
        """
        rows = _check_range(rows, self.n_test, "rows")
        if self.adapter.has_train_factors and not self.adapter.structured:
            one = self._factor("train", _check_range(cols, self.n_train, "cols"))
            return int(one.element_size() * one.shape[-1] * len(rows))
        f = self._factor("test", rows)
        return int(f.element_size() * f.numel())

    def prefetch(self, rows: range | None = None, cols: range | None = None) -> None:
        """Compute and memoise the factors of ``test[rows]`` and ``train[cols]`` now.

        A hint: with a budget too small to keep them, nothing is kept.

        Parameters
        ----------
        rows, cols : range or None
            Test and train ranges (block ranges, as later passed to ``__call__``).
        """
        if rows is not None and len(_check_range(rows, self.n_test, "rows")):
            self._factor("test", rows)
        if (
            cols is not None
            and len(_check_range(cols, self.n_train, "cols"))
            and self.adapter.has_train_factors
        ):
            self._factor("train", cols)

    # -- blocks -----------------------------------------------------------------------------
    def compute_block(self, rows: range, cols: range) -> np.ndarray:
        """Block ``test[rows] x train[cols]`` of the influence matrix.

        Parameters
        ----------
        rows, cols : range
            Contiguous test and train index ranges (step 1).

        Returns
        -------
        numpy.ndarray
            C-contiguous array of shape ``(len(rows), len(cols))`` (float64, or float32 after
            ``set_output_dtype("float32")`` with float32 factors).
        """
        rows = _check_range(rows, self.n_test, "rows")
        cols = _check_range(cols, self.n_train, "cols")
        if len(rows) == 0 or len(cols) == 0:
            return np.zeros((len(rows), len(cols)), dtype=np.float64)
        test_f = self._factor("test", rows)
        if self.adapter.has_train_factors:
            train_f = self._factor("train", cols)
            if train_f.shape[1] != test_f.shape[1] and not self.adapter.structured:
                raise ValueError(
                    f"{self.model_name}: test factors have {test_f.shape[1]} columns but train "
                    f"factors have {train_f.shape[1]}; both must live in the same space."
                )
            dtype = self._product_dtype(test_f, train_f)
            block = self.adapter.product(test_f.to(dtype), train_f.to(dtype))
        else:
            x, y = self.train.take(cols)
            block = self.adapter.block_from_data(test_f, x, y)
        return self._to_host(block, (len(rows), len(cols)), "block")

    def _to_host(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> np.ndarray:
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{self.model_name} produced a {what} of shape {tuple(t.shape)}, expected {shape}."
            )
        if t.is_complex():
            t = t.real
        out = t.detach().to(device="cpu").numpy()
        if out.dtype not in (np.float32, np.float64):
            out = out.astype(np.float64)
        # a fresh tensor's memory is ours to hand out; copy only what is not C-contiguous
        return np.ascontiguousarray(out)

    def compute_diagonal(self, cols: range) -> np.ndarray:
        """Self-influence ``grad^T (H + lambda Id)^-1 grad`` of ``train[cols]``.

        Parameters
        ----------
        cols : range
            Contiguous train index range.

        Returns
        -------
        numpy.ndarray
            1-D float64 array of length ``len(cols)``.
        """
        cols = _check_range(cols, self.n_train, "cols")
        if len(cols) == 0:
            return np.zeros(0, dtype=np.float64)
        left = self._factor("self", cols)
        if self.adapter.has_train_factors:
            right = self._factor("train", cols)
            if right.shape != left.shape and not self.adapter.structured:
                raise ValueError(
                    f"{self.model_name}: test factors of shape {tuple(left.shape)} and train "
                    f"factors of shape {tuple(right.shape)} for the same points differ."
                )
            values = self.adapter.diagonal(left.to(torch.float64), right.to(torch.float64))
        else:
            x, y = self.train.take(cols)
            values = self.adapter.diagonal_from_data(left, x, y)
        return self._to_host(values, (len(cols),), "self-influence vector")


def make_block_source(
    model: object,
    test: object,
    train: object,
    *,
    factor_budget_bytes: int = DEFAULT_FACTOR_BUDGET_BYTES,
) -> ModelBlockSource:
    """Build the block function of a model-backed influence array.

    Parameters
    ----------
    model : object
        A fitted influence model: an object implementing the factorised protocol, or a fitted
        pyDVL ``InfluenceFunctionModel``.
    test, train : object
        Test and train data in any form :func:`~infl_array.torch.data.views.as_indexed` accepts.
    factor_budget_bytes : int
        Byte budget of the factor memo (default 1 GiB); 0 disables memoisation.

    Returns
    -------
    ModelBlockSource
        The block source.

    Raises
    ------
    TypeError
        If ``model`` is not an influence model, or the data are of an unsupported type.
    ValueError
        If the model is not fitted, or a data set is empty.
    """
    if (
        isinstance(factor_budget_bytes, bool)
        or not isinstance(factor_budget_bytes, (int, np.integer))
        or factor_budget_bytes < 0
    ):
        raise ValueError(
            f"factor_budget_bytes must be a non-negative integer, got {factor_budget_bytes!r}; "
            "pass e.g. 1 << 30 (1 GiB)."
        )
    adapter = as_adapter(model)
    test_data = as_indexed(test, "test")
    train_data = as_indexed(train, "train")
    for data, name in ((test_data, "test"), (train_data, "train")):
        if len(data) == 0:
            raise ValueError(f"{name} is empty; influence needs at least one sample.")
        adapter.check_data(*data.take(range(min(2, len(data)))), name)
    return ModelBlockSource(adapter, test_data, train_data, int(factor_budget_bytes))
