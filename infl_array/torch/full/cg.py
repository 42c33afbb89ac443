"""Conjugate-gradient influence: curvature-vector products, all right-hand sides together.

For a batch of test gradients the systems ``(C_bb + lambda_b*Id) x = g_b`` (one per sample and
parameter block ``b``; one block by default) are solved by (preconditioned) conjugate gradient
run on all of them at once: each iteration makes ONE pass over the fit data computing the
curvature times the whole block of search directions, then updates every system with its own
step sizes (``alpha = r^T z / p^T A p``, ``beta = r'^T z' / r^T z``, ``z = M^-1 r``). This is
mathematically one-at-a-time CG for every right-hand side, computed together.

With ``solve_simultaneously=True`` the right-hand sides of each parameter block share one Krylov
space instead (block CG, breakdown-free as in Ji and Li, BIT 2017, which pyDVL 0.10 follows):
the search directions ``P`` are an orthonormal basis of ``Z + P beta`` (directions that are
linearly dependent are dropped, so ``P^T A P`` stays positive definite), ``alpha = (P^T A
P)^-1 P^T R``, ``beta = -(P^T A P)^-1 (A P)^T Z``; a column stops as above and leaves ``R``.

Stopping rule (``tol_mode="pydvl"``, the default, pyDVL 0.10's ``CgOperator``): a system stops
when ``||r|| < max(rtol**2 * ||g||, atol**2)``, so the defaults ``rtol=1e-4, atol=1e-6`` mean a
residual below ``1e-8 ||g||`` (about 1e-9 relative error on well-conditioned problems), exactly
as in pyDVL; ``g`` is the right-hand side (the test gradient restricted to its block).
``tol_mode="scipy"`` reads ``rtol, atol`` as :func:`scipy.sparse.linalg.cg` does:
``||r|| <= max(rtol * ||g||, atol)``. A system also stops after ``maxiter`` iterations (``None``:
10 times its block's size); reaching it emits
:class:`~infl_array.torch.full.diagnostics.ConvergenceWarning`, as does non-positive curvature
(``C + lambda*Id`` or the preconditioner not positive definite).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from infl_array.torch.data.options import optional_positive_int, parse_hessian_average
from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, TorchInfluenceBase
from infl_array.torch.full.cg_solver import (
    TOL_MODES,
    CgSystems,
    StopRule,
    iterate_block,
    iterate_columns,
)
from infl_array.torch.full.diagnostics import (
    NOT_CONVERGED,
    NOT_POSITIVE_DEFINITE,
    ConvergenceWarning,
)
from infl_array.torch.full.functional import LossFn, nonnegative
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode
from infl_array.torch.full.preconditioner import Preconditioner

__all__ = ["CgInfluence"]


class CgInfluence(TorchInfluenceBase):
    """Influence via batched (preconditioned) conjugate gradient on curvature products.

    Arguments follow pyDVL 0.10's ``CgInfluence`` (names, order, defaults and meaning); the
    keyword-only ones after them are ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float, None or dict
        ``lambda >= 0`` added to the curvature's diagonal (``None``: 0; a dict sets it per block,
        see :mod:`~infl_array.torch.full.param_blocks`). CG needs ``C + lambda*Id`` positive
        definite.
    rtol, atol : float
        Tolerances; with ``tol_mode="pydvl"`` a system stops when
        ``||r|| < max(rtol**2 * ||g||, atol**2)`` (pyDVL's meaning, see the module docstring).
    maxiter : int or None
        Maximum iterations per system; ``None`` means 10 times its block's size.
    progress : bool
        Show a progress bar of the iterations.
    precompute_grad : bool
        Accepted for pyDVL compatibility; no effect (pyDVL 0.10 does not use it either).
    preconditioner : Preconditioner or None
        :class:`~infl_array.torch.full.preconditioner.JacobiPreconditioner` or
        :class:`~infl_array.torch.full.preconditioner.NystroemPreconditioner`; a fitted copy is made
        per block at ``fit`` (the object passed stays unfitted).
    solve_simultaneously : bool
        ``False``: every right-hand side runs its own CG (its own step sizes), all of them
        computed together. ``True``: block CG, as pyDVL's: the right-hand sides of a parameter
        block share one Krylov space, so with ``m`` of them each iteration explores ``m``
        directions and far fewer iterations (each one curvature pass over ``m`` columns) are
        needed, most of all when ``m`` is a sizeable fraction of the parameters (see the
        module docstring). Same stopping rule and the same solutions to the tolerance.
    warn_on_max_iteration : bool
        Emit :class:`~infl_array.torch.full.diagnostics.ConvergenceWarning` when a system stops at
        ``maxiter`` or meets non-positive curvature.
    block_structure : BlockMode or mapping
        Parameter blocks of a block-diagonal curvature (:mod:`~infl_array.torch.full.param_blocks`).
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    tol_mode : {"pydvl", "scipy"}
        How ``rtol`` and ``atol`` are read (see the module docstring).
    hessian_average : {"sample", "batch"}
        ``"sample"``: the curvature of the mean loss over all points; ``"batch"``: every batch of
        the fit DataLoader weighted equally, as pyDVL's ``HessianOperator`` does (differs when
        the last batch is smaller).
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
    >>> cg = CgInfluence(model, torch.nn.functional.cross_entropy, 0.1).fit((x, y))
    >>> cg.test_factors(x[:4], y[:4]).shape
    torch.Size([4, 8])
    """

    solve_vectors = 5  # the iterates and their curvature products, per sample
    solve_passes = True

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any = None,
        rtol: float = 1e-4,
        atol: float = 1e-6,
        maxiter: int | None = None,
        progress: bool = False,
        precompute_grad: bool = False,
        preconditioner: Preconditioner | None = None,
        solve_simultaneously: bool = False,
        warn_on_max_iteration: bool = True,
        block_structure: BlockStructure = BlockMode.FULL,
        second_order_mode: SecondOrderMode = SecondOrderMode.HESSIAN,
        *,
        tol_mode: str = "pydvl",
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
            memory_budget=memory_budget,
        )
        self.rtol = nonnegative(rtol, "rtol")
        self.atol = nonnegative(atol, "atol")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol are both 0, so CG could never stop; pass rtol=1e-4.")
        if tol_mode not in TOL_MODES:
            raise ValueError(
                f"tol_mode must be 'pydvl' (||r|| < max(rtol**2*||g||, atol**2)) or 'scipy' "
                f"(||r|| <= max(rtol*||g||, atol)), got {tol_mode!r}."
            )
        self.tol_mode = tol_mode
        self.maxiter = optional_positive_int(maxiter, "maxiter")
        if preconditioner is not None and not isinstance(preconditioner, Preconditioner):
            raise TypeError(
                f"preconditioner must be an infl_array.torch JacobiPreconditioner or "
                f"NystroemPreconditioner (or None), got {type(preconditioner).__name__}."
            )
        self.preconditioner = preconditioner
        self.progress = bool(progress)
        self.precompute_grad = bool(precompute_grad)
        self.solve_simultaneously = bool(solve_simultaneously)
        self.warn_on_max_iteration = bool(warn_on_max_iteration)
        self._hessian_average = parse_hessian_average(hessian_average)
        self._fitted_preconditioners: list[Preconditioner] = []
        self.n_iter_: int | None = None

    def _settings(self) -> dict[str, object]:
        pre = None if self.preconditioner is None else self.preconditioner.config()
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "maxiter": self.maxiter,
            "tol_mode": self.tol_mode,
            "preconditioner": pre,
            "hessian_average": self._hessian_average,
        }

    def _fit(self) -> None:
        """Draw the preconditioners' random vectors (their products wait for ``_build``)."""
        flat = self._require_fit()
        self._fitted_preconditioners = []
        if self.preconditioner is None:
            return
        for size, reg in zip(self._blocks.sizes, self._block_reg, strict=True):
            self._fitted_preconditioners.append(
                self.preconditioner.drawn_copy(size, reg, dtype=flat.dtype, device=flat.device)
            )

    def _build(self) -> None:
        for b, pre in enumerate(self._fitted_preconditioners):
            pre.complete(partial(self.block_matmat, b))

    def _precondition(self, r: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
        if not self._fitted_preconditioners:
            return r
        if len(self._fitted_preconditioners) == 1:
            return self._fitted_preconditioners[0].solve(r)
        z = torch.zeros_like(r)
        for b, (sl, pre) in enumerate(
            zip(self._blocks.slices, self._fitted_preconditioners, strict=True)
        ):
            cols = (col_block == b).nonzero().squeeze(1)
            if cols.numel():
                z[sl, cols] = pre.solve(r[sl][:, cols])
        return z

    def _apply(self, v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
        """``(C_bb + lambda_b*Id) v`` for each column ``v`` of block ``b = col_block[c]``."""
        out = self.curvature_matmat(v, col_block)
        return out.addcmul_(v, self._column_regularization(col_block, v.dtype))

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        b, col_block = self._blocks.split_columns(grads)  # (p, m): one column per (block, sample)
        sizes = torch.tensor(self._blocks.sizes, device=b.device)
        maxiter = (
            10 * sizes[col_block]
            if self.maxiter is None
            else torch.full_like(col_block, self.maxiter)
        )
        sys = CgSystems(b, col_block, maxiter, StopRule(self.rtol, self.atol, self.tol_mode))
        desc = "Block CG" if self.solve_simultaneously else "Conjugate gradient"
        bar = tqdm(total=int(maxiter.max()), disable=not self.progress, desc=desc)
        iterate = iterate_block if self.solve_simultaneously else iterate_columns
        iterate(sys, self._apply, self._precondition, bar)
        bar.close()
        self.n_iter_ = int(sys.iters.max()) if sys.iters.numel() else 0
        self._warn(sys)
        return self._blocks.merge_columns(sys.x, grads.shape[0])

    def _warn(self, sys: CgSystems) -> None:
        """Record (and warn about) breakdowns and systems stopped at ``maxiter``."""
        b, r, breakdown, unconverged = sys.b, sys.r, sys.breakdown, sys.unconverged()
        category = ConvergenceWarning if self.warn_on_max_iteration else None
        m = b.shape[1]
        if bool(breakdown.any()):
            pre = "" if self.preconditioner is None else " or the preconditioner"
            n_bad = int(breakdown.sum())
            bad, total, _ = self._diagnostics.add_counts(NOT_POSITIVE_DEFINITE, n_bad, m)
            self._diagnostics.note(
                NOT_POSITIVE_DEFINITE,
                f"CgInfluence met non-positive curvature in {bad} of {total} systems solved "
                f"(regularization={self.regularization}): C + regularization*Id{pre} is not "
                "positive definite, so those values are unreliable; increase regularization.",
                category,
                f"CgInfluence: non-positive curvature met for {n_bad} of {m} "
                f"systems (regularization={self.regularization}): C + regularization*Id{pre} "
                "is not positive definite, so those solutions are unreliable. Increase "
                "regularization, or use DirectInfluence.",
                stacklevel=4,
            )
        else:
            self._diagnostics.add_counts(NOT_POSITIVE_DEFINITE, 0, m)
        n_bad = int(unconverged.sum())
        if not n_bad:
            self._diagnostics.add_counts(NOT_CONVERGED, 0, m)
            return
        res = torch.linalg.vector_norm(r, dim=0)
        bnorm = torch.linalg.vector_norm(b, dim=0).clamp(min=torch.finfo(b.dtype).tiny)
        worst_rel = float((res / bnorm)[unconverged].max())
        worst_abs = float(res[unconverged].max())
        bad, total, worst = self._diagnostics.add_counts(NOT_CONVERGED, n_bad, m, worst_rel)
        rule = sys.rule.describe()
        limit = int(sys.maxiter[unconverged].max())
        self._diagnostics.note(
            NOT_CONVERGED,
            f"CgInfluence stopped at maxiter={limit} before its tolerance {rule} (rtol="
            f"{self.rtol}, atol={self.atol}) in {bad} of {total} systems solved; worst "
            f"relative residual {worst:.3g}. Increase maxiter or regularization, or add a "
            "preconditioner.",
            category,
            f"CgInfluence: conjugate gradient stopped at maxiter={limit} with {n_bad} of {m} "
            f"systems not meeting the tolerance {rule} (rtol={self.rtol}, atol={self.atol}, "
            f"tol_mode={self.tol_mode!r}): worst relative residual {worst_rel:.3g}, absolute "
            f"{worst_abs:.3g}. Increase maxiter, loosen rtol/atol, add a preconditioner, or "
            "increase regularization to improve the conditioning.",
            stacklevel=4,
        )
