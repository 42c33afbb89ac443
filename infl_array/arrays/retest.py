"""A new test set against an array's model and train data: :meth:`InfluenceArray.with_test`.

The new array has its own store (its matrix and its test factors) and shares the train side
of the array it comes from: its model (the same fitted influence model, not a copy), its train
data, its block shape, dtype and compression, and the train factors kept in the first store
(its :class:`~infl_array.storage.factors.FactorStore` serves its train side with the first
store's train side object). The new source comes from the old one's declared ``retest``
capability (:class:`~infl_array.engine.sources.Retest`), so this module knows nothing of what
the model is. Where the first array's train factors are
stored (a fill stores every train factor block that fits the disk budget), the new array does
no train-side work: each of its blocks is its own test factors times stored train factors.
Train factor blocks not stored yet are computed once and stored in the first store, where the
next test set finds them.

The sharing lasts as long as the new array object: reopening its store later with
``ia.open(store, model, test=..., train=...)`` gives an ordinary array whose train factors are
computed (and stored) again.
"""

from __future__ import annotations

from typing import Any

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.sources import BlockSource, capabilities
from infl_array.storage.factors import FactorStore
from infl_array.storage.store import InfluenceStore, describe_store, local_path

__all__ = ["new_test_source", "share_train_factors"]


def new_test_source(engine: BlockEngine, test_data: Any, store: Any) -> BlockSource:
    """The block source of ``test_data`` against ``engine``'s model and train data.

    Raises :class:`TypeError` when the engine cannot compute (its store was opened without
    its model) or its source has no ``retest`` capability (not model-backed),
    :class:`ValueError` when ``store`` is the engine's own store or the model cannot take
    ``test_data``.
    """
    retest = capabilities(engine.source).retest
    if retest is None:
        how = "was opened without its model" if engine.source is None else "is not model-backed"
        raise TypeError(
            f"with_test needs an array computed from an influence model; this array {how}. "
            "Reopen it with ia.open(store, model, test=..., train=...) first."
        )
    if _same_store(engine.store, store):
        raise ValueError(
            f"with_test needs a new store for the new test set, got {store!r}, the store of "
            "this array; pass another path."
        )
    return retest.with_test(test_data)


def share_train_factors(old: BlockEngine, new: BlockEngine) -> None:
    """Let ``new``'s source keep its test factors in its store and read ``old``'s train ones."""
    train_side = capabilities(old.source).factor_store
    new_reuse = capabilities(new.source).factor_reuse
    if new_reuse is not None and train_side is not None:
        new_reuse.attach(FactorStore(new.store, train_side.disk_budget, train_from=train_side))


def _same_store(opened: InfluenceStore, store: Any) -> bool:
    """Whether the store argument ``store`` names the open store ``opened``."""
    if store is opened.spec:
        return True
    here, there = opened.local_root, local_path(store)
    if here is not None and there is not None:
        return here.resolve() == there.resolve()
    return describe_store(store) == opened.where
