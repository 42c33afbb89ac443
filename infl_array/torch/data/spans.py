"""Data that grow: appended points joined to a data set, and the fingerprint of a range.

``arr.append_train`` / ``arr.append_test`` (:mod:`infl_array.arrays.append`) need two things
of the data views (:mod:`infl_array.torch.data.views`):

* :func:`joined`: a data set followed by appended points, as one
  :class:`~infl_array.torch.data.views.IndexedData`. Tensors joined with tensors are
  concatenated (one ``TensorData``); datasets joined with datasets become one dataset (torch's
  ``ConcatDataset``) collated by the first one's ``collate_fn``; anything else is a
  :class:`JoinedData` that takes each index from its part. :func:`check_joinable` first refuses
  appended samples of another shape or dtype than the data's.
* :func:`span_fingerprint`: the fingerprint of the points ``span`` of a data set, equal to the
  fingerprint those points have when given alone: tensors are sliced (no copy), a dataset's
  items are fingerprinted under the dataset's type name, as ``DatasetData`` does (under the
  part's, for a range inside one part of torch's ``ConcatDataset``).

A grown store checks at ``open`` that the data given hold each segment's points at its range
(the data the store was created with at ``0:n``, each appended segment at its own) by these
fingerprints. A dataset's fingerprint includes its class: give the grown data as a dataset of
the class each segment was given as, or as a ``ConcatDataset`` of the parts as they were given
(for tensors, any tensors of equal values do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from infl_array.torch.data.views import (
    DatasetData,
    IndexedData,
    TensorData,
    items_fingerprint,
    sample_indices,
    tensor_bytes,
)

__all__ = ["JoinedData", "check_joinable", "joined", "span_fingerprint"]


def check_joinable(data: IndexedData, appended: IndexedData, name: str) -> None:
    """``ValueError`` unless ``appended``'s samples have the shapes and dtypes of ``data``'s
    (``x`` and ``y`` after the sample dimension) and the same model input keys."""
    if data.input_keys != appended.input_keys:
        raise ValueError(
            f"{name}: the appended samples give the model inputs {appended.input_keys}, the "
            f"store's data {data.input_keys}; append samples with the same keys."
        )
    first, new = data.take(range(1)), appended.take(range(1))
    for what, a, b in zip(("x", "y"), first, new, strict=True):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise ValueError(
                f"{name}: each appended sample's {what} has shape {tuple(b.shape[1:])} and dtype "
                f"{b.dtype}, but the store's {name} samples have shape {tuple(a.shape[1:])} and "
                f"dtype {a.dtype}; append samples of the same shape and dtype (the same "
                "preprocessing as the data the store was created with)."
            )


def joined(data: IndexedData, appended: IndexedData) -> IndexedData:
    """``data`` followed by ``appended`` (see the module docstring)."""
    out: IndexedData
    if isinstance(data, TensorData) and isinstance(appended, TensorData):
        out = TensorData(torch.cat([data.x, appended.x]), torch.cat([data.y, appended.y]))
    elif isinstance(data, DatasetData) and isinstance(appended, DatasetData):
        out = DatasetData(ConcatDataset([data.dataset, appended.dataset]), data.collate_fn)
    else:
        out = JoinedData([data, appended])
    out.batch_size, out.input_keys = data.batch_size, data.input_keys
    return out


class JoinedData(IndexedData):
    """Parts of any kind, one after the other: index ``i`` is taken from the part holding it.

    >>> a = TensorData(torch.arange(3.0), torch.zeros(3))
    >>> both = JoinedData([a, TensorData(torch.arange(10.0, 12.0), torch.ones(2))])
    >>> len(both), both.take([4, 0, 3])[0].tolist()
    (5, [11.0, 0.0, 10.0])
    """

    def __init__(self, parts: list[IndexedData]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, index: range | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate the samples at ``index`` (in that order) from their parts."""
        idx = np.asarray(list(index) if isinstance(index, range) else index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(
                f"take() got indices in [{idx.min()}, {idx.max()}] but the data has {len(self)} "
                f"samples; indices must lie in [0, {len(self) - 1}]."
            )
        part = np.searchsorted(self.starts, idx, side="right") - 1
        xs, ys, order = [], [], []
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            x, y = self.parts[p].take(idx[where] - self.starts[p])
            xs.append(x)
            ys.append(y)
            order.append(where)
        if not order:
            return self.parts[0].take(range(0))
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return torch.cat(xs)[back], torch.cat(ys)[back]

    def fingerprint(self) -> str:
        """sha256 over the parts' fingerprints."""
        h = hashlib.sha256(b"joined")
        for part in self.parts:
            h.update(f";{part.fingerprint()}".encode())
        return h.hexdigest()


def span_fingerprint(data: IndexedData, span: range) -> str:
    """The fingerprint of ``data``'s points at ``span``, equal to their fingerprint given alone.

    >>> data = TensorData(torch.arange(6.0), torch.zeros(6))
    >>> part = TensorData(torch.arange(2.0, 5.0), torch.zeros(3))
    >>> span_fingerprint(data, range(2, 5)) == part.fingerprint()
    True
    """
    if not (0 <= span.start < span.stop <= len(data) and span.step == 1):
        raise IndexError(f"a span of the data is a range inside 0:{len(data)}; got {span}.")
    if span == range(len(data)):
        return data.fingerprint()
    if isinstance(data, TensorData):
        return TensorData(
            data.x[span.start : span.stop], data.y[span.start : span.stop]
        ).fingerprint()
    if isinstance(data, DatasetData):
        return _dataset_span(data.dataset, span)
    if isinstance(data, JoinedData):
        for p, part in enumerate(data.parts):
            start = int(data.starts[p])
            if start <= span.start and span.stop <= start + len(part):
                return span_fingerprint(part, range(span.start - start, span.stop - start))
    return _sampled(data, span)


def _dataset_span(dataset: Any, span: range) -> str:
    """A dataset's items at ``span`` under its type's name; inside one part of torch's
    ``ConcatDataset`` (the grown data as appended), under that part's."""
    if isinstance(dataset, ConcatDataset):
        starts = [0, *dataset.cumulative_sizes]
        for p, part in enumerate(dataset.datasets):
            if starts[p] <= span.start and span.stop <= starts[p + 1]:
                return _dataset_span(part, range(span.start - starts[p], span.stop - starts[p]))
    return items_fingerprint(type(dataset), len(span), lambda i: dataset[span.start + i])


def _sampled(data: IndexedData, span: range) -> str:
    """Any other data: sha256 over the span's length and a deterministic sample of its points."""
    h = hashlib.sha256(f"span;n={len(span)}".encode())
    rows = sample_indices(len(span)) + span.start
    for t in data.take(rows):
        h.update(f";{t.dtype};{tuple(t.shape)};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()
