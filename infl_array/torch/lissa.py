"""LiSSA influence: the Neumann-series fixed-point iteration on Hessian-vector products.

For test gradients ``G`` (columns) it iterates, all columns together,

    ``h <- g + (1 - dampen) h - (H + lambda*Id) h / scale``,   ``h_0 = 0``,

and returns ``h / scale``, which converges to ``(H + lambda*Id)^-1 g`` when ``dampen = 0`` and
``scale`` exceeds the largest eigenvalue of ``H + lambda*Id`` (and to the solution of a damped
system otherwise). ``H`` is the Hessian of the mean loss over all fit data (each iteration is
one pass over the data for the whole block, ``vmap`` over ``jvp`` of ``grad``). Iteration stops
when the relative change ``max_j ||h_j' - h_j|| / ||h_j'||`` falls below ``rtol``; reaching
``maxiter`` first emits :class:`~infl_array.torch._base.ConvergenceWarning`.

The rate is ``1 - (mu_min + lambda) / scale`` (``mu_min`` the smallest eigenvalue of ``H``),
so small eigenvalues need many iterations; the relative-change criterion can stop early when
progress is slow.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ._base import ConvergenceWarning, TorchInfluenceBase, positive_int
from ._functional import LossFn, nonnegative

__all__ = ["LissaInfluence"]


class LissaInfluence(TorchInfluenceBase):
    """Influence via the LiSSA iteration.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float
        ``lambda >= 0`` added to the Hessian's diagonal.
    maxiter : int
        Maximum number of iterations.
    dampen : float
        Damping in ``[0, 1)``; ``0`` gives the undamped inverse.
    scale : float
        ``> 0``; must exceed the largest eigenvalue of ``H + lambda*Id`` for convergence.
    rtol : float
        Stop when the relative change of every column is below ``rtol``.
    batch_size : int or None
        Samples per pass over the data (see :class:`~infl_array.torch._base.TorchInfluenceBase`).
    warn_on_max_iteration : bool
        Emit :class:`~infl_array.torch._base.ConvergenceWarning` when stopping at ``maxiter``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = 0.0,
        maxiter: int = 1000,
        dampen: float = 0.0,
        scale: float = 10.0,
        rtol: float = 1e-4,
        batch_size: int | None = None,
        warn_on_max_iteration: bool = True,
    ) -> None:
        super().__init__(model, loss, regularization, batch_size)
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
        g = grads.T  # (p, m)
        h = torch.zeros_like(g)
        tiny = torch.finfo(g.dtype).tiny
        change = float("inf")
        it = 0
        while it < self.maxiter:
            h_new = g + (1.0 - self.dampen) * h - self.reg_hvp(h) / self.scale
            diff = torch.linalg.vector_norm(h_new - h, dim=0)
            norm = torch.linalg.vector_norm(h_new, dim=0).clamp(min=tiny)
            change = float((diff / norm).max())
            h = h_new
            it += 1
            if not torch.isfinite(h).all():
                raise FloatingPointError(
                    f"LissaInfluence diverged after {it} iterations (scale={self.scale}); "
                    "pass a scale larger than the largest eigenvalue of H + regularization*Id."
                )
            if change < self.rtol:
                break
        self.n_iter_ = it
        if change >= self.rtol and self.warn_on_max_iteration:
            warnings.warn(
                f"LissaInfluence stopped at maxiter={self.maxiter} with relative change "
                f"{change:.3g} >= rtol={self.rtol}. Increase maxiter, loosen rtol, or check "
                "that scale exceeds the largest eigenvalue of H + regularization*Id.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return (h / self.scale).T
