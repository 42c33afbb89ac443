"""LiSSA influence: the Neumann-series fixed-point iteration on Hessian-vector products.

For test gradients ``g`` (one column per sample and parameter block ``b``; one block by
default) it iterates, all columns together,

    ``h <- g + (1 - dampen) h - (C_bb + lambda_b*Id) h / scale``,   ``h_0 = 0``,

and returns ``h / scale``, which converges to ``(C_bb + lambda_b*Id)^-1 g`` when ``dampen = 0``
and ``scale`` exceeds the largest eigenvalue of ``C + lambda*Id`` (and to the solution of a
damped system otherwise). ``C`` is the Hessian of the mean loss over all fit data, or pyDVL's
Gauss-Newton matrix (each iteration is one pass over the data for all columns). Iteration stops
when the relative change ``max_j ||h_j' - h_j|| / ||h_j'||`` falls below ``rtol``; reaching
``maxiter`` first emits :class:`~infl_array.torch.full.diagnostics.ConvergenceWarning`.

The rate is ``1 - (mu_min + lambda) / scale`` (``mu_min`` the smallest eigenvalue of ``C``),
so small eigenvalues need many iterations; the relative-change criterion can stop early when
progress is slow.

Differences from pyDVL 0.10's ``LissaOperator``, on purpose: pyDVL uses one random mini-batch
per iteration (a stochastic estimate of the Hessian, which never converges below the batch
noise unless the batch is the whole data), starts from ``h_0 = g`` and stops when the largest
ELEMENT-wise relative change is below ``rtol``. Here every iteration uses the whole fit data,
so the iteration is deterministic and converges to the exact solve; with a full-batch loader
both converge to the same solution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from infl_array.torch.data.options import positive_int
from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, TorchInfluenceBase
from infl_array.torch.full.diagnostics import NOT_CONVERGED, ConvergenceWarning
from infl_array.torch.full.functional import LossFn, nonnegative
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode

__all__ = ["LissaInfluence"]


class LissaInfluence(TorchInfluenceBase):
    """Influence via the LiSSA iteration.

    Arguments follow pyDVL 0.10's ``LissaInfluence`` (names, order, defaults); ``batch_size`` is
    ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float, None or dict
        ``lambda >= 0`` added to the curvature's diagonal (``None``: 0; a dict sets it per block,
        see :mod:`~infl_array.torch.full.param_blocks`).
    maxiter : int
        Maximum number of iterations.
    dampen : float
        Damping in ``[0, 1)``; ``0`` gives the undamped inverse.
    scale : float
        ``> 0``; must exceed the largest eigenvalue of ``H + lambda*Id`` for convergence.
    rtol : float
        Stop when the relative change of every column is below ``rtol``.
    progress : bool
        Show a progress bar of the iterations.
    warn_on_max_iteration : bool
        Emit :class:`~infl_array.torch.full.diagnostics.ConvergenceWarning` when stopping at
        ``maxiter``.
    block_structure : BlockMode or mapping
        Parameter blocks of a block-diagonal curvature.
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    batch_size : int or None
        Samples per pass over the data (see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).
    memory_budget : int
        Bytes the built state, the solves' working space and the arrays made from the backend
        may hold together (default 4 GiB; see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).
    """

    solve_vectors = 3  # the iterates and their curvature products, per sample
    solve_passes = True

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any = None,
        maxiter: int = 1000,
        dampen: float = 0.0,
        scale: float = 10.0,
        rtol: float = 1e-4,
        progress: bool = False,
        warn_on_max_iteration: bool = True,
        block_structure: BlockStructure = BlockMode.FULL,
        second_order_mode: SecondOrderMode = SecondOrderMode.HESSIAN,
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
            second_order_mode=second_order_mode,
            memory_budget=memory_budget,
        )
        self.maxiter = positive_int(maxiter, "maxiter")
        self.dampen = nonnegative(dampen, "dampen")
        if self.dampen >= 1:
            raise ValueError(f"dampen must be in [0, 1), got {dampen!r}; pass e.g. dampen=0.0.")
        self.scale = nonnegative(scale, "scale")
        if self.scale == 0:
            raise ValueError(
                "scale must be > 0 (larger than the largest Hessian eigenvalue), got 0."
            )
        self.rtol = nonnegative(rtol, "rtol")
        self.progress = bool(progress)
        self.warn_on_max_iteration = bool(warn_on_max_iteration)
        self.n_iter_: int | None = None

    def _settings(self) -> dict[str, object]:
        return {
            "maxiter": self.maxiter,
            "dampen": self.dampen,
            "scale": self.scale,
            "rtol": self.rtol,
        }

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        g, col_block = self._blocks.split_columns(grads)  # (p, m): one column per (block, sample)
        lam = self._column_regularization(col_block, g.dtype)
        h = torch.zeros_like(g)
        tiny = torch.finfo(g.dtype).tiny
        change = float("inf")
        it = 0
        bar = tqdm(total=self.maxiter, disable=not self.progress, desc="LiSSA")
        while it < self.maxiter:
            # h_new = g + (1 - dampen) h - (C h + lam h) / scale, in place: the iterates of a
            # large model are hundreds of MB each (held: g, h and the product)
            h_new = self.curvature_matmat(h, col_block).addcmul_(h, lam)
            h_new.mul_(-1.0 / self.scale).add_(g).add_(h, alpha=1.0 - self.dampen)
            norm = torch.linalg.vector_norm(h_new, dim=0)
            diff = torch.linalg.vector_norm(h.sub_(h_new), dim=0)
            change = float((diff / norm.clamp(min=tiny)).max())
            h = h_new
            it += 1
            bar.update(1)
            if not bool(torch.isfinite(norm).all()) and not bool(torch.isfinite(h).all()):
                raise FloatingPointError(
                    f"LissaInfluence diverged after {it} iterations (scale={self.scale}); "
                    "pass a scale larger than the largest eigenvalue of H + regularization*Id."
                )
            if change < self.rtol:
                break
        bar.close()
        self.n_iter_ = it
        if change >= self.rtol:
            self._diagnostics.note(
                NOT_CONVERGED,
                f"LissaInfluence stopped at maxiter={self.maxiter} with relative change "
                f"{change:.3g} >= rtol={self.rtol}. Increase maxiter, loosen rtol, or check "
                "that scale exceeds the largest eigenvalue of H + regularization*Id.",
                ConvergenceWarning if self.warn_on_max_iteration else None,
                stacklevel=3,
            )
        return self._blocks.merge_columns(h / self.scale, grads.shape[0])
