"""Conjugate-gradient influence: Hessian-vector products, all right-hand sides together.

For a batch of test gradients ``B = [g_1 ... g_m]`` (columns) the systems
``(H + lambda*Id) x_j = g_j`` are solved by conjugate gradient run on all columns at once:
each iteration makes ONE pass over the fit data computing ``(H + lambda*Id) P`` for the whole
block of search directions ``P`` (``vmap`` over ``jvp`` of ``grad``), then updates every
column with its own step sizes (``alpha_j = r_j^T r_j / p_j^T A p_j``,
``beta_j = r_j'^T r_j' / r_j^T r_j``). Column ``j`` stops when
``||r_j|| <= max(rtol * ||g_j||, atol)`` (scipy's criterion); converged columns drop out of the
products. Reaching ``maxiter`` first emits :class:`~infl_array.torch._base.ConvergenceWarning`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ._base import ConvergenceWarning, TorchInfluenceBase, optional_positive_int
from ._functional import LossFn, nonnegative

__all__ = ["CgInfluence"]


class CgInfluence(TorchInfluenceBase):
    """Influence via batched conjugate gradient on Hessian-vector products.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float
        ``lambda >= 0`` added to the Hessian's diagonal. CG needs ``H + lambda*Id`` positive
        definite; for non-convex models pass a regularization large enough for that.
    rtol, atol : float
        Stop a column when ``||r|| <= max(rtol * ||g||, atol)``.
    maxiter : int or None
        Maximum iterations; ``None`` means ``10 * n_params``.
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
        rtol: float = 1e-4,
        atol: float = 1e-6,
        maxiter: int | None = None,
        batch_size: int | None = None,
        warn_on_max_iteration: bool = True,
    ) -> None:
        super().__init__(model, loss, regularization, batch_size)
        self.rtol = nonnegative(rtol, "rtol")
        self.atol = nonnegative(atol, "atol")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol are both 0, so CG could never stop; pass rtol=1e-4.")
        self.maxiter = optional_positive_int(maxiter, "maxiter")
        self.warn_on_max_iteration = bool(warn_on_max_iteration)
        self.n_iter_: int | None = None

    def _settings(self) -> dict[str, object]:
        return {"rtol": self.rtol, "atol": self.atol, "maxiter": self.maxiter}

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        b = grads.T  # (p, m)
        maxiter = self.maxiter if self.maxiter is not None else 10 * b.shape[0]
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rs = (r * r).sum(0)
        tol = torch.clamp(self.rtol * torch.linalg.vector_norm(b, dim=0), min=self.atol)
        active = rs.sqrt() > tol
        breakdown = torch.zeros_like(active)
        it = 0
        while bool(active.any()) and it < maxiter:
            cols = active.nonzero().squeeze(1)
            p_a = p[:, cols]
            ap = self.reg_hvp(p_a)
            curv = (p_a * ap).sum(0)
            bad = curv <= 0
            if bool(bad.any()):  # H + lambda*Id not positive definite along p: stop those
                breakdown[cols[bad]] = True
                active[cols[bad]] = False
                keep = ~bad
                cols, p_a, ap, curv = cols[keep], p_a[:, keep], ap[:, keep], curv[keep]
            alpha = rs[cols] / curv
            x[:, cols] += alpha * p_a
            r_a = r[:, cols] - alpha * ap
            rs_new = (r_a * r_a).sum(0)
            r[:, cols] = r_a
            p[:, cols] = r_a + (rs_new / rs[cols]) * p_a
            rs[cols] = rs_new
            active[cols] = rs_new.sqrt() > tol[cols]
            it += 1
        self.n_iter_ = it
        self._warn(b, r, tol, active, breakdown)
        return x.T

    def _warn(
        self,
        b: torch.Tensor,
        r: torch.Tensor,
        tol: torch.Tensor,
        active: torch.Tensor,
        breakdown: torch.Tensor,
    ) -> None:
        if not self.warn_on_max_iteration:
            return
        if bool(breakdown.any()):
            warnings.warn(
                f"CgInfluence: H + regularization*Id is not positive definite (non-positive "
                f"curvature met for {int(breakdown.sum())} of {b.shape[1]} right-hand sides, "
                f"regularization={self.regularization}); their solutions are unreliable. "
                "Increase regularization or use DirectInfluence.",
                ConvergenceWarning,
                stacklevel=4,
            )
        if bool(active.any()):
            res = torch.linalg.vector_norm(r, dim=0)
            bnorm = torch.linalg.vector_norm(b, dim=0).clamp(min=torch.finfo(b.dtype).tiny)
            worst_rel = float((res / bnorm)[active].max())
            worst_abs = float(res[active].max())
            maxiter = self.maxiter if self.maxiter is not None else 10 * b.shape[0]
            warnings.warn(
                f"CgInfluence: conjugate gradient stopped at maxiter={maxiter} with "
                f"{int(active.sum())} of {b.shape[1]} right-hand sides not meeting the "
                f"tolerance ||residual|| <= max(rtol*||g||, atol) (rtol={self.rtol}, "
                f"atol={self.atol}): worst relative residual {worst_rel:.3g}, absolute "
                f"{worst_abs:.3g}. Increase maxiter, loosen rtol/atol, or increase "
                "regularization to improve the conditioning.",
                ConvergenceWarning,
                stacklevel=4,
            )
