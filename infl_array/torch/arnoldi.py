"""Arnoldi (Lanczos) influence: low-rank eigendecomposition of the Hessian.

At ``fit`` the top-``rank`` eigenpairs (largest magnitude) of ``H``, the Hessian of the mean
fit loss, are computed with implicitly restarted Lanczos (:func:`scipy.sparse.linalg.eigsh`)
on a :class:`~scipy.sparse.linalg.LinearOperator` whose products are Hessian-vector products
over the fit data (a block of vectors per data pass when scipy asks for several). When
``rank >= n_params - 1`` (where ARPACK cannot run) the explicit Hessian and
:func:`torch.linalg.eigh` are used instead, so ``rank = n_params`` is exact.

With ``H ~ V diag(mu) V^T`` the factors are

* test: ``diag(1 / (mu + lambda)) V^T g_test`` (one row per sample, ``rank`` columns),
* train: ``V^T g_train``,

whose inner product is ``g_test^T V diag(1/(mu + lambda)) V^T g_train``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from ._base import TorchInfluenceBase, optional_positive_int, positive_int
from ._functional import LossFn, nonnegative

__all__ = ["ArnoldiInfluence"]


class ArnoldiInfluence(TorchInfluenceBase):
    """Influence via the top eigenpairs of the Hessian.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float
        ``lambda >= 0`` added to every kept eigenvalue.
    rank : int
        Number of eigenpairs kept, ``1 <= rank <= n_params``.
    krylov_dimension : int or None
        Lanczos basis size (scipy's ``ncv``); ``None``: ``min(n_params, max(2*rank + 1, 20))``.
    tol : float
        Relative accuracy of the eigenvalues (scipy's ``tol``; 0 means machine precision).
    max_iter : int or None
        Maximum Arnoldi restarts; ``None``: scipy's default.
    seed : int
        Seed of the deterministic start vector.
    batch_size : int or None
        Samples per pass over the data (see :class:`~infl_array.torch._base.TorchInfluenceBase`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = 0.0,
        rank: int = 10,
        krylov_dimension: int | None = None,
        tol: float = 1e-6,
        max_iter: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(model, loss, regularization, batch_size)
        self.rank = positive_int(rank, "rank")
        self.krylov_dimension = optional_positive_int(krylov_dimension, "krylov_dimension")
        self.tol = nonnegative(tol, "tol")
        self.max_iter = optional_positive_int(max_iter, "max_iter")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        self.seed = seed
        self.eigenvalues_: torch.Tensor | None = None
        self.eigenvectors_: torch.Tensor | None = None

    def _settings(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "krylov_dimension": self.krylov_dimension,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "seed": self.seed,
        }

    def _fit(self) -> None:
        flat = self._require_fit()
        p = flat.n_params
        if self.rank > p:
            raise ValueError(
                f"rank={self.rank} exceeds the number of trainable parameters ({p}); "
                f"pass rank <= {p}."
            )
        if self.rank >= p - 1:
            evals, evecs = torch.linalg.eigh(self.hessian())
            order = torch.argsort(evals.abs(), descending=True)[: self.rank]
        else:
            evals, evecs = self._lanczos(p)
            order = torch.argsort(evals.abs(), descending=True)
        evals, evecs = evals[order], evecs[:, order]
        shifted = evals + self.regularization
        if bool((shifted.abs() <= torch.finfo(evals.dtype).eps * evals.abs().max()).any()):
            raise ValueError(
                f"an eigenvalue of H + regularization*Id is ~0 (regularization="
                f"{self.regularization}); increase regularization or lower rank."
            )
        self.eigenvalues_, self.eigenvectors_ = evals, evecs

    def _lanczos(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self._require_fit()

        def matmat(v: np.ndarray) -> np.ndarray:
            vt = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(p, -1))
            hv = self.hvp(vt.to(device=flat.device, dtype=flat.dtype))
            return hv.detach().cpu().double().numpy()

        op = LinearOperator(
            (p, p),
            matvec=lambda v: matmat(v).ravel(),
            matmat=matmat,
            dtype=np.float64,
        )
        ncv = self.krylov_dimension or min(p, max(2 * self.rank + 1, 20))
        v0 = np.random.default_rng(self.seed).standard_normal(p)
        vals, vecs = eigsh(
            op, k=self.rank, which="LM", ncv=ncv, v0=v0, tol=self.tol, maxiter=self.max_iter
        )
        vals_t = torch.as_tensor(vals).to(device=flat.device, dtype=flat.dtype)
        return vals_t, torch.as_tensor(vecs).to(device=flat.device, dtype=flat.dtype)

    def _require_eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_fit()
        assert self.eigenvalues_ is not None and self.eigenvectors_ is not None
        return self.eigenvalues_, self.eigenvectors_

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        evals, evecs = self._require_eigen()
        return (grads @ evecs) / (evals + self.regularization)

    def _project(self, grads: torch.Tensor) -> torch.Tensor:
        _, evecs = self._require_eigen()
        return grads @ evecs
