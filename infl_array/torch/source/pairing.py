"""Pairings: how a model-backed source turns test factors into a block, declared by the adapter.

An adapter (:mod:`infl_array.torch.source.adapters`) declares its pairing with
``adapter.pairing(factors, train)``; the source then never asks what kind of model it serves:

* :class:`FactorPairing`: test factors against train factors through ``adapter.product``
  (and ``adapter.diagonal`` for the self-influence). ``same_space`` says the two live in one
  space (plain products ``a @ b.T``: their widths must agree, and a tile is sized on the
  train factors it computes anyway); false for structured per-layer factors with a declared
  ``factor_product``.
* :class:`DataPairing`: test factors against the raw train data (pyDVL models, which expose no
  train factors): ``adapter.block_from_data`` and ``adapter.diagonal_from_data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from infl_array.torch.data.views import IndexedData
from infl_array.torch.source.blame import blamed

__all__ = ["DataPairing", "FactorPairing", "Factors", "Pairing", "Products"]


class Factors(Protocol):
    """Where a pairing gets factors (:class:`~infl_array.torch.source.factor_cache.FactorCache`)."""

    def factors(self, axis: str, r: range) -> torch.Tensor:
        """The factors of samples ``r`` of ``axis`` (``"test"``, ``"train"`` or ``"self"``)."""
        ...

    def pieces(self, axis: str, r: range) -> Iterator[torch.Tensor]:
        """The factors of samples ``r`` of ``axis`` as consecutive pieces of rows."""
        ...


class Products(Protocol):
    """What a pairing asks of a model (:class:`~infl_array.torch.source.adapters.ModelAdapter`)."""

    name: str

    def product(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor: ...

    def diagonal(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor: ...

    def block_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor: ...

    def diagonal_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor: ...


class Pairing(Protocol):
    """How test factors become a block and a self-influence vector."""

    def block(self, test_f: torch.Tensor, cols: range, float32: bool) -> torch.Tensor:
        """The block of ``test_f``'s samples against ``train[cols]``; ``float32``: float32
        factors may be multiplied in float32."""
        ...

    def diagonal(self, left: torch.Tensor, cols: range) -> torch.Tensor:
        """Self-influence of ``train[cols]`` from their test factors ``left``."""
        ...

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        """Bytes of the test factors of ``test[rows]`` (``cols``: the tile's first columns)."""
        ...

    def prefetch_train(self, cols: range) -> None:
        """Compute and memoise what ``train[cols]`` needs now (a hint)."""
        ...


class FactorPairing:
    """Blocks from test and train factors (see the module docstring)."""

    def __init__(self, adapter: Products, factors: Factors, same_space: bool) -> None:
        self.adapter, self.factors, self.same_space = adapter, factors, same_space

    def block(self, test_f: torch.Tensor, cols: range, float32: bool) -> torch.Tensor:
        """The block, column piece by column piece where the train factors come in pieces
        (:meth:`~infl_array.torch.source.factor_cache.FactorCache.pieces`): each entry is
        the same product of one test and one train factor row."""
        parts, left = [], {}
        for train_f in self.factors.pieces("train", cols):
            if self.same_space and train_f.shape[1] != test_f.shape[1]:
                raise ValueError(
                    f"{self.adapter.name}: test factors have {test_f.shape[1]} columns but "
                    f"train factors have {train_f.shape[1]}; both must live in the same space."
                )
            single = float32 and test_f.dtype == train_f.dtype == torch.float32
            dtype = torch.float32 if single else torch.float64
            if dtype not in left:
                left[dtype] = test_f.to(dtype)
            parts.append(self.adapter.product(left[dtype], train_f.to(dtype)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def diagonal(self, left: torch.Tensor, cols: range) -> torch.Tensor:
        right = self.factors.factors("train", cols)
        if self.same_space and right.shape != left.shape:
            raise ValueError(
                f"{self.adapter.name}: test factors of shape {tuple(left.shape)} and train "
                f"factors of shape {tuple(right.shape)} for the same points differ."
            )
        return self.adapter.diagonal(left.to(torch.float64), right.to(torch.float64))

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        if self.same_space:  # measured on factors the tile computes anyway
            one = self.factors.factors("train", cols)
            return int(one.element_size() * one.shape[-1] * len(rows))
        f = self.factors.factors("test", rows)
        return int(f.element_size() * f.numel())

    def prefetch_train(self, cols: range) -> None:
        self.factors.factors("train", cols)


class DataPairing:
    """Blocks from test factors and raw train data (see the module docstring)."""

    def __init__(self, adapter: Products, factors: Factors, train: IndexedData) -> None:
        self.adapter, self.factors, self.train = adapter, factors, train

    def block(self, test_f: torch.Tensor, cols: range, float32: bool) -> torch.Tensor:
        return blamed(
            lambda r: self.adapter.block_from_data(test_f, *self.train.take(r)),
            cols,
            "train",
            f"{self.adapter.name}'s influence on train data",
        )

    def diagonal(self, left: torch.Tensor, cols: range) -> torch.Tensor:
        return blamed(
            lambda r: self.adapter.diagonal_from_data(
                left[r.start - cols.start : r.stop - cols.start], *self.train.take(r)
            ),
            cols,
            "train",
            f"{self.adapter.name}'s self-influence",
        )

    def test_factor_bytes(self, rows: range, cols: range) -> int:
        f = self.factors.factors("test", rows)
        return int(f.element_size() * f.numel())

    def prefetch_train(self, cols: range) -> None:
        """Nothing: the train side is raw data."""
