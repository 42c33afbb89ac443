"""Nystroem-sketch influence: a randomised low-rank curvature inverted by Woodbury.

Every curvature block ``C_bb`` (the Hessian of the mean fit loss, or pyDVL's
Gauss-Newton matrix) gets a randomised Nystroem approximation
``C_nys = (C Omega)(Omega^T C Omega)^+ (C Omega)^T = U diag(s) U^T`` of width ``rank``
(:mod:`~infl_array.torch.full.lowrank`, pyDVL 0.10's algorithm step for step: one data pass with
``rank`` columns per block). The sketches are drawn at ``fit``; the data pass runs on first use.
Test factors are

    ``(C_nys + lambda*Id)^-1 g = U diag(1/(s + lambda) - 1/lambda) U^T g + g / lambda``

(concatenated over blocks; needs ``lambda > 0``), train factors the plain gradients.

Randomness: ``seed=None`` (the default) draws the sketch from torch's global generator with the
call pyDVL makes, so ``torch.manual_seed(s)`` before ``fit`` reproduces a draw; an integer seed
uses its own generator (one stream over the blocks, in block order). Either way
``influence_config()`` records a digest of the sketch after ``fit``, so a store never mixes
values of two sketches.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import nn

from infl_array.torch.data.options import check_seed, parse_hessian_average, positive_int
from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, SOLVE_FIX, TorchInfluenceBase
from infl_array.torch.full.functional import LossFn
from infl_array.torch.full.lowrank import (
    LowRank,
    make_generator,
    nystroem_from_sketch,
    nystroem_sketch,
)
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode

__all__ = ["NystroemSketchInfluence"]

SKETCH = "NystroemSketchInfluence's sketch"
DRAW = "NystroemSketchInfluence's sketch being drawn (its QR)"


class NystroemSketchInfluence(TorchInfluenceBase):
    """Influence via a randomised Nystroem approximation of the curvature.

    Arguments follow pyDVL 0.10's ``NystroemSketchInfluence`` (names, order, meaning;
    ``regularization`` and ``rank`` are required, as there); the keyword-only ones are ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float or dict
        ``lambda > 0`` (a dict sets it per block and must cover every block).
    rank : int
        Width of the sketch (at most the block's size is used).
    block_structure : BlockMode or mapping
        Parameter blocks of a block-diagonal curvature (:mod:`~infl_array.torch.full.param_blocks`).
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    seed : int or None
        Seed of the sketch; ``None``: torch's global generator (pyDVL's behaviour).
    hessian_average : {"sample", "batch"}
        ``"batch"`` weights the fit DataLoader's batches equally, as pyDVL's operators do.
    batch_size : int or None
        Samples per pass over the data (see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).
    memory_budget : int
        Bytes the built state, the solves' working space and the arrays made from the backend
        may hold together (default 4 GiB; see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    >>> model = torch.nn.Linear(3, 2).double()
    >>> loss = torch.nn.functional.cross_entropy
    >>> nys = NystroemSketchInfluence(model, loss, 0.1, rank=4, seed=0).fit((x, y))
    >>> nys.test_factors(x[:2], y[:2]).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any,
        rank: int,
        block_structure: BlockStructure = BlockMode.FULL,
        second_order_mode: SecondOrderMode = SecondOrderMode.HESSIAN,
        *,
        seed: int | None = None,
        hessian_average: str = "sample",
        batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(
            model,
            loss,
            regularization,
            batch_size,
            block_structure=block_structure,
            second_order_mode=second_order_mode,
            positive_regularization=True,
            memory_budget=memory_budget,
        )
        self.rank = positive_int(rank, "rank")
        self.seed = check_seed(seed, global_ok=True)
        self._hessian_average = parse_hessian_average(hessian_average)
        self._low_rank: list[LowRank] = []
        self._omegas: list[torch.Tensor] = []
        self._sketch: str | None = None

    def _settings(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "seed": self.seed,
            "hessian_average": self._hessian_average,
            "sketch": self._sketch,
        }

    @property
    def low_rank_(self) -> list[LowRank]:
        """The approximation of every block (``[]`` before fit; computed on first use)."""
        return list(self._fitted_state("_low_rank", []))

    def _sketch_bytes(self, size: int) -> int:
        """Bytes of one block's sketch, ``(size, min(rank, size))``."""
        return size * min(self.rank, size) * self._itemsize

    def _fit(self) -> None:
        """Draw the sketch of every block now (cheap; the products wait for ``_build``), held
        in the memory budget until the build has used it (its QR's working space while it is
        drawn)."""
        flat = self._require_fit()
        gen = make_generator(self.seed, flat.device)
        digest = hashlib.sha256()
        self._omegas = []
        self.budget.release_all(SKETCH)
        sizes = self._blocks.sizes
        self.budget.reserve(sum(map(self._sketch_bytes, sizes)), SKETCH, SOLVE_FIX, lasting=True)
        try:
            # the normal draw while its Q factor (the sketch, held above) is made from it
            with self.budget.hold(max(map(self._sketch_bytes, sizes)), DRAW, SOLVE_FIX):
                for size in sizes:
                    omega, sketch = nystroem_sketch(
                        size, self.rank, dtype=flat.dtype, device=flat.device, generator=gen
                    )
                    self._omegas.append(omega)
                    digest.update(sketch.encode())
        except BaseException:
            self._omegas = []
            self.budget.release_all(SKETCH)
            raise
        self._sketch = digest.hexdigest()

    def _hold(self, nbytes: int) -> AbstractContextManager[None]:
        """The working space of a block's approximation after its product, in the budget."""
        return self.budget.hold(nbytes, f"Nystroem approximation of rank {self.rank}", SOLVE_FIX)

    def _build(self) -> None:
        self._low_rank = [
            nystroem_from_sketch(partial(self.block_matmat, b), omega, self._hold)
            for b, omega in enumerate(self._omegas)
        ]
        self._omegas = []
        self.budget.release_all(SKETCH)

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                lr.woodbury_solve(grads[:, sl], reg)
                for sl, lr, reg in zip(
                    self._blocks.slices, self._low_rank, self._block_reg, strict=True
                )
            ],
            dim=1,
        )
