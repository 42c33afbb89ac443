"""Direct influence: explicit Hessian and a dense factorisation.

At ``fit`` the Hessian of the mean training loss over the flattened trainable parameters is
built with ``torch.func`` (``jacrev`` of ``grad``, the same matrix as
:func:`torch.func.hessian`), batch by batch, each batch's mean-loss Hessian weighted
by ``n_batch / n`` (so ragged batches give exactly the Hessian of the mean over all points).
``A = H + lambda*Id`` is factorised once: Cholesky when ``A`` is positive definite, LU
otherwise. Test factors are ``A^-1 grad l(z_test)``; train factors the plain gradients.
Memory is ``O(n_params^2)``: for small and medium models.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import TorchInfluenceBase
from ._functional import LossFn

__all__ = ["DirectInfluence"]


class DirectInfluence(TorchInfluenceBase):
    """Influence via the explicit (regularised) Hessian.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float
        ``lambda >= 0`` added to the Hessian's diagonal.
    batch_size : int or None
        Samples per pass over the data (see :class:`~infl_array.torch._base.TorchInfluenceBase`).

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
        regularization: float = 0.0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(model, loss, regularization, batch_size)
        self.hessian_: torch.Tensor | None = None
        self._chol: torch.Tensor | None = None
        self._lu: tuple[torch.Tensor, torch.Tensor] | None = None

    def _fit(self) -> None:
        h = self.hessian()
        a = h + self.regularization * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        self.hessian_ = h
        self._chol, self._lu = None, None
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            self._chol = chol
            return
        lu, pivots, info = torch.linalg.lu_factor_ex(a)
        if int(info) != 0:
            raise ValueError(
                f"H + regularization*Id is singular (regularization={self.regularization}); "
                "pass a larger regularization (e.g. 1e-3 times the Hessian's scale)."
            )
        self._lu = (lu, pivots)

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        rhs = grads.T
        if self._chol is not None:
            return torch.cholesky_solve(rhs, self._chol).T
        assert self._lu is not None
        return torch.linalg.lu_solve(self._lu[0], self._lu[1], rhs).T
