"""Per-sample rows a fit pass computed, found again later by the samples' content.

:class:`~infl_array.torch.layerwise.projected.ProjectedInfluence` computes the projected loss
gradient of every fit sample during its fit (the EK-FAC eigenvalue correction, the projected Fisher,
or, with the empirical K-FAC, the covariance pass). Those are exactly its train factors, so
:class:`FitRows` keeps them (within a byte budget) and ``train_factors`` returns the kept row
of each sample it is asked about instead of running another forward and backward pass: the
train side of a fill then costs no pass at all when the train data are the fit data.

A sample is recognised by a digest of its bytes: the BLAKE2b hash (16 bytes) of its input and
target after they are converted for the model (dtype, device), with their dtypes and shapes.
Equal digests mean equal samples (up to a 2**-128 collision chance), and equal samples have
equal gradients, so a kept row is never the row of another sample.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["FitRows", "sample_keys"]


def _row_bytes(t: torch.Tensor) -> np.ndarray:
    """``t`` as one row of bytes per sample, ``(n, nbytes)`` (any dtype, any device)."""
    flat = t.detach().reshape(t.shape[0], -1).contiguous().cpu()
    return flat.view(torch.uint8).numpy() if flat.shape[1] else np.zeros((t.shape[0], 0), "u1")


def sample_keys(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """One 16-byte digest per sample of ``(x, y)`` (see the module docstring)."""
    head = f"{x.dtype}{tuple(x.shape[1:])}|{y.dtype}{tuple(y.shape[1:])}".encode()
    xs, ys = _row_bytes(x), _row_bytes(y)
    keys = []
    for xr, yr in zip(xs, ys, strict=True):
        h = hashlib.blake2b(head, digest_size=16)
        h.update(xr.data)
        h.update(yr.data)
        keys.append(h.digest())
    return keys


class FitRows:
    """Rows of up to ``capacity`` samples, ``(capacity, width)`` like ``like``, by sample key.

    Filled while a fit pass runs (:meth:`add`); rows of samples seen twice are kept once. When
    the fit data hold more samples than ``capacity``, nothing is kept (:attr:`active` turns
    False and the memory is released): the train factors are then computed as usual.
    """

    def __init__(self, capacity: int, width: int, like: torch.Tensor) -> None:
        self._rows: torch.Tensor | None = like.new_empty((capacity, width))
        self._index: dict[bytes, int] = {}
        self._counts: list[int] = []  # times each kept sample was added
        self.hits = 0
        """Rows served by :meth:`take` so far."""

    @property
    def active(self) -> bool:
        """Whether rows are (still) being kept."""
        return self._rows is not None

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes reserved for the rows."""
        return 0 if self._rows is None else self._rows.numel() * self._rows.element_size()

    def add(self, keys: list[bytes], rows: torch.Tensor) -> None:
        """Keep ``rows[k]`` as the row of the sample ``keys[k]``."""
        if self._rows is None:
            return
        if len(keys) != rows.shape[0]:
            raise ValueError(f"{len(keys)} sample keys for {rows.shape[0]} rows")
        start, fresh = len(self._index), list[int]()
        for k, key in enumerate(keys):
            if key not in self._index:
                self._index[key] = start + len(fresh)
                self._counts.append(0)
                fresh.append(k)
            self._counts[self._index[key]] += 1
        if len(self._index) > self._rows.shape[0]:
            self.drop()
            return
        if fresh:
            where = torch.tensor(fresh, device=rows.device)
            self._rows[start : start + len(fresh)] = rows.index_select(0, where)

    def drop(self) -> None:
        """Release the rows; nothing is kept any more."""
        self._rows, self._index, self._counts = None, {}, []

    def weighted(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every kept row and how many times its sample was added, ``(m, width)`` and
        ``(m,)`` (a view, not a copy), or None when nothing is kept: a sum over the added
        samples is the count-weighted sum over the rows."""
        if self._rows is None or not self._index:
            return None
        counts = torch.tensor(self._counts, dtype=self._rows.dtype, device=self._rows.device)
        return self._rows[: len(self._index)], counts

    def take(self, keys: list[bytes]) -> tuple[list[int], torch.Tensor | None]:
        """The positions in ``keys`` with a kept row, and those rows (a copy) in that order."""
        if self._rows is None:
            return [], None
        found = [(k, self._index[key]) for k, key in enumerate(keys) if key in self._index]
        if not found:
            return [], None
        where = torch.tensor([i for _, i in found], device=self._rows.device)
        self.hits += len(found)
        return [k for k, _ in found], self._rows.index_select(0, where)
