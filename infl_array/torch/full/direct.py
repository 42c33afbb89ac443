"""Direct influence: explicit curvature blocks and a dense factorisation.

At ``fit`` the curvature of the mean training loss over the selected parameters is built
explicitly, block by block
(:meth:`~infl_array.torch.full.base.TorchInfluenceBase.curvature_blocks`): the Hessian with
``torch.func`` (``jacrev`` of ``grad``, batch by batch, each batch's mean-loss Hessian weighted by
``n_batch / n``, so ragged batches give exactly the Hessian of the mean over all points), or pyDVL's
Gauss-Newton matrix ``1/N sum_i g_i g_i^T``. Each ``A_b = C_bb + lambda_b*Id`` is factorised once:
Cholesky when positive definite, LU otherwise. Test factors are ``A_b^-1 g_b(z_test)`` concatenated
over blocks; train factors the plain gradients. Memory is ``O(sum_b size_b^2)``: for small and
medium models (or blocks).

The curvature and its factorisation are built on first use (``test_factors``, ``influences``,
``hessian_``), not at ``fit`` (see :mod:`~infl_array.torch.full.base`); reading train factors never
builds them. An ``A_b`` that is not positive definite (the model is not at a minimum of the
training loss, e.g. trained briefly or with Adam, and ``lambda_b`` is too small to make up for
it) is still solved (LU), but the values solve an indefinite system: an
:class:`~infl_array.torch.full.diagnostics.IndefiniteHessianWarning` gives its smallest eigenvalue
and the regularization that would make it positive definite, and ``diagnostics()`` keeps it under
``"not_positive_definite"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, TorchInfluenceBase
from infl_array.torch.full.diagnostics import (
    NOT_POSITIVE_DEFINITE,
    IndefiniteHessianWarning,
    rounding_level,
)
from infl_array.torch.full.functional import LossFn
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode

__all__ = ["DirectInfluence"]


class DirectInfluence(TorchInfluenceBase):
    """Influence via the explicit (regularised) curvature.

    Arguments follow pyDVL 0.10's ``DirectInfluence``; ``batch_size`` is ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float, None or dict
        ``lambda >= 0`` added to the curvature's diagonal (``None``: 0; a dict sets it per block,
        see :mod:`~infl_array.torch.full.param_blocks`).
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

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    >>> model = torch.nn.Linear(3, 2).double()
    >>> infl = DirectInfluence(model, torch.nn.functional.cross_entropy, 0.01).fit((x, y))
    >>> infl.influences(x[:4], y[:4], x, y).shape
    torch.Size([4, 20])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any = None,
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
        self._hessian: torch.Tensor | None = None
        self._factors: list[tuple[str, tuple[torch.Tensor, ...]]] = []

    @property
    def hessian_(self) -> torch.Tensor | None:
        """The explicit block-diagonal curvature (no regularization), ``(n_params, n_params)``;
        ``None`` before fit (built on first access after a lazy fit)."""
        hessian: torch.Tensor | None = self._fitted_state("_hessian", None)
        return hessian

    def _build_bytes(self) -> int:
        """Peak bytes of :meth:`_build`: the ``p x p`` curvature, one regularised block and its
        factor (``3 p^2``), and with several blocks the block-diagonal copy and the working
        matrices of the explicit products (``2`` more of the largest block's)."""
        p, itemsize = self.n_params, self._itemsize
        sizes = self._blocks.sizes
        extra = 2 * max(sizes) ** 2 if len(sizes) > 1 else 0
        return itemsize * (3 * p * p + extra)

    def _build_what(self) -> str:
        p = self.n_params
        return (
            f"explicit curvature ({p:,} x {p:,} entries: DirectInfluence holds the whole "
            "Hessian and its factorisation; for a model this size use a matrix-free backend "
            "such as CgInfluence, ArnoldiInfluence, EkfacInfluence or ProjectedInfluence)"
        )

    def _build(self) -> None:
        mats = self.curvature_blocks()
        self._hessian = mats[0] if len(mats) == 1 else torch.block_diag(*mats)
        factors: list[tuple[str, tuple[torch.Tensor, ...]]] = []
        indefinite: list[str] = []
        for name, h, reg in zip(self._blocks.names, mats, self._block_reg, strict=True):
            a = h.clone()
            a.diagonal().add_(reg)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                factors.append(("chol", (chol,)))
                del a
                continue
            del chol
            where = f" of block {name!r}" if len(mats) > 1 else ""
            lu, pivots, info = torch.linalg.lu_factor_ex(a)
            if int(info) != 0:
                raise ValueError(
                    f"the curvature{where} plus regularization*Id is singular "
                    f"(regularization={reg}); pass a larger regularization (e.g. 1e-3 times "
                    "the curvature's scale)."
                )
            factors.append(("lu", (lu, pivots)))
            evals = torch.linalg.eigvalsh(a)
            lowest = float(evals[0])
            if lowest >= -rounding_level(evals):  # singular to working precision, not indefinite
                continue
            indefinite.append(
                f"smallest eigenvalue{where} {lowest:.3g} at regularization {reg:g} (needs "
                f"regularization > {reg - lowest:.3g})"
            )
        self._factors = factors
        if indefinite:
            self._diagnostics.note(
                NOT_POSITIVE_DEFINITE,
                f"DirectInfluence: C + regularization*Id is not positive definite: "
                f"{'; '.join(indefinite)}. Influence values solve an indefinite system and are "
                "unreliable (the model is not at a minimum of the training loss). Increase "
                "regularization, or use second_order_mode=SecondOrderMode.GAUSS_NEWTON "
                "(positive semi-definite).",
                IndefiniteHessianWarning,
                stacklevel=4,
            )

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        parts = []
        for sl, (kind, f) in zip(self._blocks.slices, self._factors, strict=True):
            rhs = grads[:, sl].T
            if kind == "chol":
                parts.append(torch.cholesky_solve(rhs, f[0]).T)
            else:
                parts.append(torch.linalg.lu_solve(f[0], f[1], rhs).T)
        return torch.cat(parts, dim=1)
