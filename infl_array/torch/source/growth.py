"""Growing data of a model-backed source: the ``growth`` capability of
:class:`~infl_array.torch.source.source.ModelBlockSource`.

``arr.append_train(data)`` asks the source for a source whose train data are its own followed
by ``data`` (:meth:`GrowthMixin.appended`): the appended data are checked as ``create`` checks
data (the model must take them; empty data are refused) and must have the shape and dtype of
the data already there (:func:`~infl_array.torch.data.spans.check_joinable`). The new source
holds the same model (the fitted curvature stays: appending never refits) with the joined data
(:func:`~infl_array.torch.data.spans.joined`); nothing is computed. ``open`` checks each
recorded segment of a grown store against the data given with
:meth:`GrowthMixin.span_fingerprint`.
"""

from __future__ import annotations

from typing import Any

from infl_array.engine.sources import Grown
from infl_array.torch.data.spans import check_joinable, joined, span_fingerprint
from infl_array.torch.data.views import IndexedData, as_indexed
from infl_array.torch.source.adapters import ModelAdapter

__all__ = ["GrowthMixin"]

_SIDES = ("test", "train")


class GrowthMixin:
    """The ``growth`` capability (:class:`~infl_array.engine.sources.Growth`) of a model-backed
    source (see the module docstring)."""

    adapter: ModelAdapter
    test: IndexedData
    train: IndexedData
    factor_budget_bytes: int

    @property
    def growth(self) -> GrowthMixin:
        """Test and train data can grow (:class:`~infl_array.engine.sources.Growth`)."""
        return self

    def appended(self, side: str, data: Any) -> Grown:
        """A source whose ``side`` data are this one's followed by ``data`` (checked)."""
        old = self._side(side)
        if isinstance(data, int):
            raise TypeError(
                f"append_{side} of a model-backed array takes the {side} data to append (a tuple "
                f"(x, y), a Dataset or a DataLoader), got the int {data!r}."
            )
        new = as_indexed(data, side)
        self.adapter.check_data(*new.take(range(min(2, len(new)))), side)
        check_joinable(old, new, side)
        grown = joined(old, new)
        test, train = (grown, self.train) if side == "test" else (self.test, grown)
        source: Any = type(self)(self.adapter, test, train, self.factor_budget_bytes)  # type: ignore[call-arg]
        return Grown(source, len(new), new.fingerprint())

    def span_fingerprint(self, side: str, span: range) -> str:
        """The fingerprint of the ``side`` data at ``span`` (equal to those points' given alone)."""
        return span_fingerprint(self._side(side), span)

    def _side(self, side: str) -> IndexedData:
        if side not in _SIDES:
            raise ValueError(f"a data side is 'test' or 'train'; got {side!r}.")
        return self.test if side == "test" else self.train
