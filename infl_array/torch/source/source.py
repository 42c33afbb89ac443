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
  Within a tile declared with :meth:`ModelBlockSource.begin_tile`, a block is a row slice of
  one product of a strip of the tile's test rows with ``train[cols]``
  (:mod:`~infl_array.torch.source.strips`): the same entries, one product per strip.
* :meth:`ModelBlockSource.fingerprints` returns exactly the keys ``"model"``, ``"backend"``,
  ``"test"`` and ``"train"``: ``model_fingerprint()`` (or, for a plug-in without it, a sha256 of
  the canonical config), the canonical JSON (``sort_keys``) of ``influence_config()``, and the
  data fingerprints of :func:`infl_array.torch.data.views.as_indexed`.
* :meth:`ModelBlockSource.describe` returns ``{"kind": "model", "backend": <class name>,
  "config": influence_config()}`` (JSON-able).
* :meth:`ModelBlockSource.compute_diagonal` returns the 1-D float64 self-influence
  ``grad^T (H + lambda Id)^-1 grad`` of ``train[cols]``.
* Capabilities (:mod:`infl_array.engine.sources`): ``factor_reuse`` (the factors below),
  ``diagonal`` (the self-influence), ``retest`` (:meth:`ModelBlockSource.with_test`: the
  same model and train data against a new test set) and ``growth`` (appended test or train
  points, :mod:`~infl_array.torch.source.growth`) are the source itself.

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

Memory
------
One :class:`~infl_array.engine.budget.Budget` accounts what the source holds
(:attr:`ModelBlockSource.budget`): the model's own (a backend with ``memory_budget``, the
:class:`~infl_array.protocol.Budgeted` capability), so that the backend's fitted state, its
working space and the array's factor memo, strips, decoded blocks and writes in flight stay
within the backend's ``memory_budget`` together; or, for a model without one, a budget of
``memory_budget`` bytes (default :data:`DEFAULT_MEMORY_BUDGET`, 4 GiB). ``factor_budget_bytes``
(the older name of the memo's bound, kept for compatibility) caps the memo within it.
:meth:`ModelBlockSource.factor_row_bytes` gives the bytes of one sample's factors, from which a
new store's default block shape is chosen
(:func:`~infl_array.engine.budget.default_block_shape`).

Factors
-------
The factors are held by a :class:`~infl_array.torch.source.factor_cache.FactorCache` (memo,
factor store, claims: the one cache machine, :mod:`infl_array.engine.keeper`); how a block is
made from them is the adapter's declared pairing (:mod:`infl_array.torch.source.pairing`).
Test factors per test range and train factors per train range are memoised, keyed by
``(axis, start, stop)`` with axis ``"test"``, ``"train"`` or ``"self"`` (test factors of train
points, for the self-influence), in an LRU memo drawn from the memory budget. A request for a
range inside a memoised range is served by slicing it. The memo keeps
tensors where the influence model returned them (the model's device; numpy factors become CPU
tensors), in its dtype. A factor larger than what the budget has left is not kept, and older
entries are evicted by bytes (and when another part of the budget needs the bytes), so a
too-small budget only costs recomputation. :attr:`ModelBlockSource.stats`
counts factor computations, memo hits and evictions. The memo is not pickled: a source sent to
a worker process starts with an empty memo. Access is serialised by a lock, so concurrent
threads compute each factor once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from infl_array.engine.budget import Budget, check_budget_value
from infl_array.errors import format_bytes
from infl_array.protocol import FactorisedInfluence
from infl_array.storage.factors import FactorStore
from infl_array.torch.data.views import IndexedData, as_indexed
from infl_array.torch.source.adapters import (
    ModelAdapter,
    ProtocolAdapter,
    check_fitted,
    check_unchanged_since_fit,
)
from infl_array.torch.source.factor_cache import FactorCache
from infl_array.torch.source.growth import GrowthMixin
from infl_array.torch.source.pairing import FactorPairing
from infl_array.torch.source.pydvl import PyDVLAdapter, is_pydvl_model
from infl_array.torch.source.strips import Strips

__all__ = [
    "DEFAULT_FACTOR_BUDGET_BYTES",
    "DEFAULT_MEMORY_BUDGET",
    "ModelBlockSource",
    "make_block_source",
]

DEFAULT_FACTOR_BUDGET_BYTES = 1 << 30
"""The factor memo's bound of older releases (1 GiB); the memo is now bounded by the memory
budget, and ``factor_budget_bytes`` caps it where it is given."""

DEFAULT_MEMORY_BUDGET = 4 << 30
"""Memory budget of an array whose model has none (4 GiB, the backends' default)."""


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
    if isinstance(model, FactorisedInfluence):
        check_fitted(model)
        check_unchanged_since_fit(model)
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


def _check_range(r: object, n: int, what: str) -> range:
    if not isinstance(r, range):
        raise TypeError(f"{what} must be a range, got {type(r).__name__}.")
    if r.step != 1 or r.start < 0 or r.stop > n or r.start > r.stop:
        raise IndexError(f"{what} must be a contiguous range inside [0, {n}] with step 1, got {r}.")
    return r


def _check_data(adapter: ModelAdapter, data: IndexedData, name: str) -> IndexedData:
    """``data`` after refusing what the model cannot take (on its first samples)."""
    if len(data) == 0:
        raise ValueError(f"{name} is empty; influence needs at least one sample.")
    adapter.check_data(*data.take(range(min(2, len(data)))), name)
    return data


class ModelBlockSource(GrowthMixin):
    """Block function of a model-backed influence array (see the module docstring).

    Parameters
    ----------
    adapter : ModelAdapter
        Adapter around the influence model (built by :func:`make_block_source`).
    test, train : IndexedData
        Test and train data.
    factor_budget_bytes : int or None
        The factor memo's own bound (older name, kept for compatibility); None: the budget's.
    budget : Budget or None
        The memory budget the source draws from (see the module docstring); None: a new one of
        :data:`DEFAULT_MEMORY_BUDGET`.

    Attributes
    ----------
    n_test, n_train : int
        Number of test and train points (the matrix shape).
    factors : FactorCache
        The factors (memo, factor store, claims).
    budget : Budget
        What the source, its model and its array hold (see the module docstring).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        test: IndexedData,
        train: IndexedData,
        factor_budget_bytes: int | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.adapter = adapter
        self.test = test
        self.train = train
        self.n_test = len(test)
        self.n_train = len(train)
        self.budget = budget if budget is not None else Budget(DEFAULT_MEMORY_BUDGET)
        memo_bound = self.budget.total if factor_budget_bytes is None else factor_budget_bytes
        self.factor_budget_bytes = memo_bound
        self.factors = FactorCache(adapter, test, train, memo_bound, self.budget)
        self.pairing = adapter.pairing(self.factors, train)
        self.strips = Strips(memo_bound, self.budget)
        self._fingerprints: dict[str, str] | None = None
        self._config: dict[str, Any] | None = None
        self._output_float32 = False

    def __getstate__(self) -> dict[str, Any]:
        # sent to workers (fills only send a source when blocks are missing): the model's
        # deferred fitting work runs once here, not once per worker
        self.adapter.prepare()
        return self.__dict__.copy()

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
            ``test``/``train``: data fingerprints; ``parameters`` (models that fingerprint
            each parameter): canonical JSON of ``{name: digest}``, so a refusal names them.
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
            parameters = self.adapter.parameter_fingerprints()
            if parameters is not None:
                self._fingerprints["parameters"] = canonical_json(parameters, "parameters")
        return dict(self._fingerprints)

    def notes(self) -> dict[str, str]:
        """What the influence model's solves found so far (its ``diagnostics()``)."""
        return self.adapter.notes()

    def describe(self) -> dict[str, Any]:
        """JSON-able description: ``{"kind": "model", "backend": name, "config": config}``."""
        description = self.adapter.description()
        canonical_json(description, f"{self.model_name}.description()")
        return {"kind": "model", "backend": self.model_name, "config": description}

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_test, n_train)``."""
        return (self.n_test, self.n_train)

    def __repr__(self) -> str:
        memo = self.factors.memo
        return (
            f"ModelBlockSource(backend={self.model_name}, n_test={self.n_test}, "
            f"n_train={self.n_train}, memo={len(memo)} entries/{memo.nbytes} B)"
        )

    # -- capabilities (infl_array.engine.sources) -------------------------------------------
    @property
    def factor_reuse(self) -> ModelBlockSource:
        """Factors are memoised (:class:`~infl_array.engine.sources.FactorReuse`)."""
        return self

    @property
    def diagonal(self) -> ModelBlockSource:
        """Self-influence is available (:class:`~infl_array.engine.sources.DiagonalSource`)."""
        return self

    @property
    def retest(self) -> ModelBlockSource:
        """New test sets (:class:`~infl_array.engine.sources.Retest`): :meth:`with_test`."""
        return self

    @property
    def factor_norms(self) -> ModelBlockSource | None:
        """Factor norms (:class:`~infl_array.engine.sources.FactorNorms`) when blocks are plain
        inner products of the factors (no declared ``factor_product``, not pyDVL)."""
        plain = isinstance(self.pairing, FactorPairing) and self.pairing.same_space
        return self if plain else None

    def norms_of(self, side: str, span: range) -> tuple[np.ndarray, int]:
        """See :meth:`factor_norms`; ``side`` is ``"test"`` or ``"train"``."""
        f = self.factors.factors(side, span)
        return f.abs().to(torch.float64).norm(dim=1).cpu().numpy(), int(f.shape[1])

    def with_test(self, test_data: Any) -> ModelBlockSource:
        """The same model and train data against ``test_data`` (checked as ``create`` does)."""
        test = _check_data(self.adapter, as_indexed(test_data, "test"), "test")
        return ModelBlockSource(
            self.adapter, test, self.train, self.factor_budget_bytes, self.budget
        )

    # -- factors (the FactorReuse capability) ------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Factor computations (``"test_factors"``, ``"train_factors"``, ``"self_factors"``),
        memo hits (``"hits"``) and blocks read from the store (``"factor_reads"``)."""
        return self.factors.stats

    @property
    def memo_bytes(self) -> int:
        """Bytes currently held by the factor memo."""
        return self.factors.memo.nbytes

    @property
    def memo_evictions(self) -> int:
        """Number of memo entries evicted so far."""
        return self.factors.memo.evictions

    def attach(self, factor_store: FactorStore | None) -> None:
        """Keep factors in ``factor_store`` (one block of samples per chunk), or in memory only.

        With a factor store, factors are requested by whole blocks through the cache machine
        (:mod:`~infl_array.torch.source.factor_cache`).
        """
        self.factors.attach(factor_store)

    @property
    def factor_store(self) -> FactorStore | None:
        """The factor store attached with :meth:`attach` (None: factors in memory only)."""
        return self.factors.store

    def memo_room(self) -> int:
        """Bytes the memo may hold now: its bound, or three quarters of what the budget has
        left beside the memo's own holdings (the rest is the working space of computing factors
        and blocks), whichever is less."""
        memo = self.factors.memo
        return min(self.factor_budget_bytes, (self.budget.available + memo.held_bytes) * 3 // 4)

    def factor_row_bytes(self) -> tuple[int, int]:
        """Bytes of one test point's and one train point's factors (a new store's default block
        shape is chosen from them): measured on the first train point (one gradient), the
        test side from the model's declared ``test_factor_width`` where the pairing is not a
        plain product, else measured on the first test point."""
        if isinstance(self.pairing, FactorPairing):
            train = self.factors.compute("train", range(min(1, self.n_train)))
            per_train = int(train.element_size() * train.shape[-1])
            width = self.adapter.test_factor_width()
            if self.pairing.same_space:
                return per_train, per_train
            if width is not None:
                return int(train.element_size() * width), per_train
        test = self.factors.compute("test", range(min(1, self.n_test)))
        per_test = int(test.element_size() * test.shape[-1])
        return per_test, per_test

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        """Bytes the test factors of ``test[rows]`` take (the engine sizes tiles with it).

        Measured on factors the tile needs anyway, so sizing costs no extra computation
        (:meth:`~infl_array.torch.source.pairing.Pairing.test_factor_bytes`).
        """
        rows = _check_range(rows, self.n_test, "rows")
        return self.pairing.test_factor_bytes(rows, _check_range(cols, self.n_train, "cols"))

    def prefetch(self, rows: range | None = None, cols: range | None = None) -> None:
        """Compute and memoise the factors of ``test[rows]`` and ``train[cols]`` now.

        A hint: with a budget too small to keep them, nothing is kept.

        Parameters
        ----------
        rows, cols : range or None
            Test and train ranges (block ranges, as later passed to ``__call__``).
        """
        if rows is not None and len(_check_range(rows, self.n_test, "rows")):
            self.factors.factors("test", rows)
        if cols is not None and len(_check_range(cols, self.n_train, "cols")):
            self.pairing.prefetch_train(cols)

    def begin_tile(
        self,
        runs: list[range],
        block_rows: int,
        groups: list[list[range]] | None = None,
        blocks_kept: bool = True,
    ) -> None:
        """The tile this thread computes next covers the test rows ``runs`` (whole block rows
        of ``block_rows``) and the column groups ``groups``: its blocks come from one product
        per strip of rows and block column or group (:mod:`~infl_array.torch.source.strips`;
        views of it where ``blocks_kept`` is false: a fill only writes them)."""
        self.strips.begin_tile(runs, block_rows, groups, blocks_kept)

    # -- blocks -----------------------------------------------------------------------------
    def set_output_dtype(self, dtype: Any) -> None:
        """The dtype blocks are stored in: float32 storage keeps float32 products.

        With float64 (the default) every product is taken in float64. With float32, float32
        factors are multiplied in float32 (twice as fast, and the values are rounded to
        float32 when stored anyway); float64 factors still multiply in float64.
        """
        self._output_float32 = bool(np.dtype(dtype) == np.float32)

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
        # the product (float64) and its host copy
        with self.budget.hold(2 * 8 * len(rows) * len(cols), "a block being computed"):
            block = self.strips.block(rows, cols, self._product)
            if block is None:
                block = self._product(rows, cols)
            return self._to_host(block, (len(rows), len(cols)), "block")

    def _product(self, rows: range, cols: range) -> torch.Tensor:
        test_f = self.factors.factors("test", rows)
        return self.pairing.block(test_f, cols, self._output_float32)

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
        values = self.pairing.diagonal(self.factors.factors("self", cols), cols)
        return self._to_host(values, (len(cols),), "self-influence vector")

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


def make_block_source(
    model: object,
    test: object,
    train: object,
    *,
    memory_budget: int | None = None,
    factor_budget_bytes: int | None = None,
) -> ModelBlockSource:
    """Build the block function of a model-backed influence array.

    Parameters
    ----------
    model : object
        A fitted influence model: an object implementing the factorised protocol, or a fitted
        pyDVL ``InfluenceFunctionModel``.
    test, train : object
        Test and train data in any form :func:`~infl_array.torch.data.views.as_indexed` accepts.
    memory_budget : int or None
        Bytes the array's parts may hold together, for a model without a memory budget of its
        own (default :data:`DEFAULT_MEMORY_BUDGET`); a backend with one (``memory_budget=``
        of the per-layer backends) bounds its arrays with it, and a different value here is
        refused.
    factor_budget_bytes : int or None
        The factor memo's own bound within the budget (older name, kept for compatibility);
        0 disables memoisation.

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
    if factor_budget_bytes is not None and (
        isinstance(factor_budget_bytes, bool)
        or not isinstance(factor_budget_bytes, (int, np.integer))
        or factor_budget_bytes < 0
    ):
        raise ValueError(
            f"factor_budget_bytes must be a non-negative integer, got {factor_budget_bytes!r}; "
            "pass e.g. 1 << 30 (1 GiB)."
        )
    adapter = as_adapter(model)
    budget = _budget_of(adapter, memory_budget)
    test_data = as_indexed(test, "test")
    train_data = as_indexed(train, "train")
    return ModelBlockSource(
        adapter,
        _check_data(adapter, test_data, "test"),
        _check_data(adapter, train_data, "train"),
        None if factor_budget_bytes is None else int(factor_budget_bytes),
        budget,
    )


def _budget_of(adapter: ModelAdapter, memory_budget: int | None) -> Budget:
    """The budget an array of ``adapter``'s model draws from (see the module docstring)."""
    own = adapter.budget()
    if own is None:
        return Budget(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
    if memory_budget is not None and check_budget_value(memory_budget) != own.total:
        raise ValueError(
            f"memory_budget={memory_budget} was given, but {adapter.name} holds its memory in "
            f"its own memory_budget ({format_bytes(own.total)}), which bounds its arrays too; "
            f"set it on the backend ({adapter.name}(..., memory_budget={memory_budget})) and "
            "leave memory_budget out here."
        )
    return own
