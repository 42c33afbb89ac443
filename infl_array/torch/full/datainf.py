"""DataInf influence: the inverse harmonic mean of regularised rank-one curvatures.

pyDVL 0.10's ``InverseHarmonicMeanInfluence`` (Kwon et al. 2024, "DataInf") replaces the inverse
of the regularised Gauss-Newton matrix ``(1/N sum_i g_i g_i^T + lambda*Id)^-1`` by the mean of
the inverses of its rank-one terms (the inverse of their harmonic mean):

    ``(1/N) sum_i (g_i g_i^T + lambda*Id)^-1 v
      = (1/lambda) (v - (1/N) sum_i g_i (g_i^T v) / (lambda + ||g_i||^2))``

by the Sherman-Morrison formula, with ``g_i`` the loss gradient of training point ``i`` (over the
fit data, restricted to each parameter block; ``lambda_b > 0`` for every block). Test factors
are that expression applied to the test gradients, concatenated over blocks; train factors the
plain gradients. Each call of ``test_factors`` makes one pass over the fit data (per-sample
gradients), for all its samples at once; nothing is stored at ``fit``.

The mean is over all fit points (pyDVL's intended point averaging; pyDVL 0.10 weights its
batches by the number of right-hand sides instead, which is correct only for one test point at
a time and equal batches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, TorchInfluenceBase
from infl_array.torch.full.functional import LossFn
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode

__all__ = ["InverseHarmonicMeanInfluence"]


class InverseHarmonicMeanInfluence(TorchInfluenceBase):
    """DataInf: influence with the inverse harmonic mean of rank-one curvatures.

    Arguments follow pyDVL 0.10's ``InverseHarmonicMeanInfluence``; ``batch_size`` is ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float or dict
        ``lambda > 0``; a dict must give a positive value for every block.
    block_structure : BlockMode or mapping
        Parameter blocks (:mod:`~infl_array.torch.full.param_blocks`).
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
    >>> dinf = InverseHarmonicMeanInfluence(model, loss, 0.1).fit((x, y))
    >>> dinf.influences(x[:2], y[:2], x, y).shape
    torch.Size([2, 20])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any,
        block_structure: BlockStructure = BlockMode.FULL,
        *,
        batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(
            model,
            loss,
            regularization,
            batch_size,
            block_structure=block_structure,
            second_order_mode=SecondOrderMode.GAUSS_NEWTON,  # built from gradient outer products
            positive_regularization=True,
            memory_budget=memory_budget,
        )

    solve_vectors = 4  # the correction, its batch term and running sum, the result
    solve_passes = True

    def _solve_pass_bytes(self) -> int:
        return self._term_sample_bytes()

    def _term_sample_bytes(self) -> int:
        """Working space per fit sample of the correction's pass: the sample's gradient pass
        (two graphs and its gradient), its selected copy and its squares (``gb * gb``)."""
        row = self.n_params * self._itemsize
        return 2 * self._graph_bytes() + row * (2 if self._blocks.is_identity else 3)

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        flat = self._require_fit()
        slices = self._blocks.slices
        what = f"{type(self).__name__}'s pass over the fit data"

        def batch_term(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            g = self._select(flat.per_sample_grads(x, y))
            out = torch.empty_like(grads)
            for sl, reg in zip(slices, self._block_reg, strict=True):
                gb = g[:, sl]
                coef = (grads[:, sl] @ gb.T) / (reg + (gb * gb).sum(1))
                out[:, sl] = coef @ gb / x.shape[0]
            return out

        correction = self._mean_over_fit(batch_term, self._term_sample_bytes(), what)
        reg = torch.cat(
            [
                torch.full((sl.stop - sl.start,), r, dtype=grads.dtype, device=grads.device)
                for sl, r in zip(slices, self._block_reg, strict=True)
            ]
        )
        return (grads - correction) / reg
