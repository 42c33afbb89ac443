"""The block-source contract: what computes the blocks of a stored array.

A *source* is the engine's only view of a model or a function. :class:`BlockSource` lists
everything the engine (:mod:`infl_array.engine.block_engine`) and the array constructors use;
optional capabilities are declared as properties that are ``None`` when a source lacks them, never
probed with ``getattr``:

* ``factor_reuse`` (:class:`FactorReuse`): the source keeps per-sample factors in a memo drawn
  from a memory budget (:mod:`infl_array.engine.budget`), so blocks are computed in tiles that
  reuse them (see :func:`infl_array.engine.plan.plan_tiles`), and the array's other parts
  (decoded blocks, writes in flight) draw from the same budget;
* ``diagonal`` (:class:`DiagonalSource`): the source computes the self-influence of train
  points (the diagonal of the train x train influence), served by
  :class:`DiagonalBlocks` as the blocks of a 1-D array;
* ``retest`` (:class:`Retest`): the source's model and train data can be paired with another
  test set (``InfluenceArray.with_test``), without the core knowing what the model is;
* ``factor_norms`` (:class:`FactorNorms`): every entry is the plain inner product of a test and
  a train factor, so ``|I[i, j]| <= |t_i| |g_j|``, and the source gives the factors' norms
  (a top-k skips the blocks that provably cannot enter it, :mod:`infl_array.engine.top_k`);
* ``growth`` (:class:`Growth`): the source's test or train data can grow by appended points
  (``arr.append_train`` / ``arr.append_test``, :mod:`infl_array.arrays.append`).

:func:`capabilities` is the one place that reads them off a source that may be absent (a
read-only store has none): ``capabilities(engine.source).factor_store``.

Two sources implement the contract: :class:`FunctionSource` (a plain block function
``fn(rows, cols)``) and :class:`infl_array.torch.source.source.ModelBlockSource` (an influence model
and two data sets). This module imports neither torch nor zarr (the factor store only as a type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from infl_array.engine.validate import to_numpy

if TYPE_CHECKING:
    from infl_array.engine.budget import Budget
    from infl_array.storage.factors import FactorStore

__all__ = [
    "BlockFunction",
    "BlockSource",
    "DiagonalBlocks",
    "DiagonalSource",
    "FactorNorms",
    "FactorReuse",
    "FunctionSource",
    "Grown",
    "Growth",
    "PlainSource",
    "qualname",
]

BlockFunction = Callable[[range, range], Any]
"""``fn(rows: range, cols: range) -> array (len(rows), len(cols))``."""


@runtime_checkable
class FactorReuse(Protocol):
    """Capability: per-sample factors memoised under a byte budget, reusable across blocks."""

    @property
    def factor_budget_bytes(self) -> int:
        """The memo's own bound in bytes."""
        ...

    @property
    def budget(self) -> Budget:
        """The memory budget the source, its model and its array draw from
        (:mod:`infl_array.engine.budget`)."""
        ...

    def memo_room(self) -> int:
        """Bytes the memo may hold now (tiles are sized to it)."""
        ...

    def factor_row_bytes(self) -> tuple[int, int]:
        """Bytes of one test point's and one train point's factors."""
        ...

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        """Bytes the test factors of ``test[rows]`` take in the memo.

        ``cols`` is the first train range the tile needs: a source may measure on factors it
        must compute anyway.
        """
        ...

    def attach(self, factor_store: FactorStore | None) -> None:
        """Keep factors in ``factor_store`` (by whole blocks), or in memory only (None)."""
        ...

    @property
    def factor_store(self) -> FactorStore | None:
        """The attached factor store, or None."""
        ...

    def prefetch(self, rows: range | None = None, cols: range | None = None) -> None:
        """Compute and memoise the factors of ``test[rows]`` and ``train[cols]`` now (a hint)."""
        ...

    def begin_tile(
        self,
        runs: list[range],
        block_rows: int,
        groups: list[list[range]] | None = None,
        blocks_kept: bool = True,
    ) -> None:
        """The tile the calling thread computes next covers the test rows ``runs`` (runs of
        whole block rows of ``block_rows`` each): a hint that its blocks may be computed from
        one product per run and block column, or per run and column group (``groups``: lists
        of consecutive block columns, as train ranges, whose train factors may be computed in
        one call). ``blocks_kept`` false (a fill) says the tile's blocks are only written,
        never kept after their write: a block may then be a view of a larger buffer."""
        ...


@runtime_checkable
class DiagonalSource(Protocol):
    """Capability: the self-influence of train points."""

    def compute_diagonal(self, cols: range) -> Any:
        """1-D array-like of length ``len(cols)``: the self-influence of ``train[cols]``."""
        ...


@runtime_checkable
class Retest(Protocol):
    """Capability: the source's model and train data against another test set."""

    def with_test(self, test_data: Any) -> BlockSource:
        """A source of ``test_data`` against the same model and train data.

        The test data are checked as ``create`` checks them (they must be in a form the model
        takes); nothing is computed.
        """
        ...


@runtime_checkable
class FactorNorms(Protocol):
    """Capability: blocks are ``test_factors @ train_factors.T`` and the factors' norms."""

    def norms_of(self, side: str, span: range) -> tuple[np.ndarray, int]:
        """The Euclidean norms (1-D float64) of the factors of ``side[span]`` (``"test"`` or
        ``"train"``), and the factors' width."""
        ...


@dataclass(frozen=True)
class Grown:
    """What :meth:`Growth.appended` gives: the grown source, how many points were appended,
    and the fingerprint of the appended data (None where a source has no data)."""

    source: BlockSource
    n: int
    fingerprint: str | None


@runtime_checkable
class Growth(Protocol):
    """Capability: the test or train data grow by appended points (the model stays)."""

    def appended(self, side: str, data: Any) -> Grown:
        """A source whose ``side`` (``"test"`` or ``"train"``) data are this one's followed by
        ``data``, checked as ``create`` checks data (``ValueError``/``TypeError`` naming what
        is wrong); nothing is computed."""
        ...

    def span_fingerprint(self, side: str, span: range) -> str | None:
        """The fingerprint of the ``side`` data at ``span``: equal to the fingerprint of those
        points given alone (as :meth:`appended` records it), None where a source has no data."""
        ...


@runtime_checkable
class BlockSource(Protocol):
    """What computes the blocks of a stored array.

    ``compute_block`` may return numpy arrays, torch tensors (any device) or anything with
    ``__array__``; the engine checks shape, dtype and finiteness
    (:func:`infl_array.engine.validate.check_block`) before anything is stored.
    """

    @property
    def shape(self) -> tuple[int, int] | None:
        """``(n_test, n_train)`` when the source knows it (model-backed), else None."""
        ...

    def compute_block(self, rows: range, cols: range) -> Any:
        """The values of ``test[rows] x train[cols]``, shape ``(len(rows), len(cols))``."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, recorded in the store as ``computed_by``."""
        ...

    def fingerprints(self) -> dict[str, str]:
        """What identifies the source's model and data, recorded and compared at ``open``."""
        ...

    def set_output_dtype(self, dtype: np.dtype[Any]) -> None:
        """The dtype blocks are stored in (a source may compute in it)."""
        ...

    @property
    def factor_reuse(self) -> FactorReuse | None:
        """The factor-reuse capability, or None."""
        ...

    @property
    def diagonal(self) -> DiagonalSource | None:
        """The self-influence capability, or None."""
        ...

    @property
    def retest(self) -> Retest | None:
        """The new-test-set capability, or None."""
        ...

    @property
    def factor_norms(self) -> FactorNorms | None:
        """The factor-norms capability, or None."""
        ...

    @property
    def growth(self) -> Growth | None:
        """The growing-data capability, or None."""
        ...

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters of work done (e.g. factor computations); empty when there are none."""
        ...

    def notes(self) -> dict[str, str]:
        """What computing found that a reader should know, ``{key: message}`` (JSON-able).

        E.g. ``{"not_positive_definite": "..."}`` from a torch backend whose regularised
        curvature is indefinite. Empty when all is well; asking computes nothing. The engine
        records new or changed notes in the store after computing blocks
        (:mod:`infl_array.storage.notes`).
        """
        ...


@dataclass(frozen=True)
class Capabilities:
    """The optional capabilities of a source, each None where it lacks one (or is absent)."""

    factor_reuse: FactorReuse | None = None
    diagonal: DiagonalSource | None = None
    retest: Retest | None = None
    factor_norms: FactorNorms | None = None
    growth: Growth | None = None

    @property
    def factor_store(self) -> FactorStore | None:
        """The factor store attached to the factor-reuse capability, or None."""
        return None if self.factor_reuse is None else self.factor_reuse.factor_store


def capabilities(source: BlockSource | None) -> Capabilities:
    """What ``source`` can do beyond computing blocks (nothing for None: a read-only store).

    Examples
    --------
    >>> capabilities(None).factor_store is None
    True
    >>> capabilities(FunctionSource(lambda rows, cols: 0)).diagonal is None
    True
    """
    if source is None:
        return Capabilities()
    return Capabilities(
        source.factor_reuse, source.diagonal, source.retest, source.factor_norms, source.growth
    )


class PlainSource:
    """Base of sources with no optional capability and nothing to fingerprint or count."""

    def fingerprints(self) -> dict[str, str]:
        return {}

    def set_output_dtype(self, dtype: np.dtype[Any]) -> None:
        """Values are computed as they come; the engine casts them to the store's dtype."""

    @property
    def factor_reuse(self) -> None:
        return None

    @property
    def diagonal(self) -> None:
        return None

    @property
    def retest(self) -> None:
        return None

    @property
    def factor_norms(self) -> None:
        return None

    @property
    def growth(self) -> Growth | None:
        return None

    @property
    def stats(self) -> Mapping[str, int]:
        return {}

    def notes(self) -> dict[str, str]:
        """Nothing to report."""
        return {}


class FunctionSource(PlainSource):
    """A plain block function as a :class:`BlockSource`.

    Examples
    --------
    >>> src = FunctionSource(lambda rows, cols: [[r * 10 + c for c in cols] for r in rows])
    >>> src.compute_block(range(1, 2), range(0, 3))
    [[10, 11, 12]]
    >>> src.describe()["kind"], src.factor_reuse, src.diagonal
    ('function', None, None)
    """

    def __init__(self, fn: BlockFunction) -> None:
        if not callable(fn):
            raise TypeError(
                f"fn must be callable as fn(rows: range, cols: range); got {type(fn).__name__}."
            )
        self.fn = fn

    @property
    def shape(self) -> None:
        return None

    def compute_block(self, rows: range, cols: range) -> Any:
        """``fn``'s values for the block, in memory of their own: an array or tensor it returns
        may be (a view of) the caller's, which the caller may change later, while the engine
        keeps decoded blocks for later reads."""
        raw = self.fn(rows, cols)
        if isinstance(raw, np.ndarray) or hasattr(raw, "detach"):
            return np.array(to_numpy(raw), copy=True)
        return raw

    def describe(self) -> dict[str, Any]:
        return {"kind": "function", "name": qualname(self.fn)}

    @property
    def growth(self) -> FunctionSource:
        """A block function has no data: its axes grow by a count, ``arr.append_train(n)``
        (the function must accept the grown ranges)."""
        return self

    def appended(self, side: str, data: Any) -> Grown:
        """This source, grown by ``data`` points (a positive int) along ``side``."""
        if isinstance(data, bool) or not isinstance(data, int | np.integer) or data < 1:
            raise TypeError(
                f"an array of a block function has no {side} data to append; pass how many "
                f"{side} points to add, a positive int (the function must accept the grown "
                f"ranges), got {type(data).__name__}."
            )
        return Grown(self, int(data), None)

    def span_fingerprint(self, side: str, span: range) -> None:
        """A block function has no data to fingerprint."""
        return None


class DiagonalBlocks(PlainSource):
    """The self-influence capability of a source as the blocks of a ``(1, n_train)`` array.

    ``of`` is the source the capability belongs to: its notes are this source's notes.
    """

    def __init__(self, diagonal: DiagonalSource, n_train: int, of: BlockSource) -> None:
        self.source = diagonal
        self.n_train = n_train
        self.of = of

    def notes(self) -> dict[str, str]:
        return self.of.notes()

    @property
    def shape(self) -> tuple[int, int]:
        return (1, self.n_train)

    def compute_block(self, rows: range, cols: range) -> Any:
        values = to_numpy(self.source.compute_diagonal(cols))
        return values.reshape(1, -1) if values.ndim == 1 else values

    def describe(self) -> dict[str, Any]:
        return {"kind": "self_influence"}


def qualname(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable (its type's for callable objects)."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name
