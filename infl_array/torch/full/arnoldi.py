"""Arnoldi (Lanczos) influence: low-rank eigendecomposition of the curvature, block by block.

On first use after ``fit`` (the fit itself is cheap, see :mod:`~infl_array.torch.full.base`), the
top-``rank`` eigenpairs (largest magnitude) of every curvature block ``C_bb``
(the Hessian of the mean fit loss, or pyDVL's Gauss-Newton matrix) are computed with implicitly
restarted Lanczos (:func:`scipy.sparse.linalg.eigsh`, with pyDVL's ``krylov_dimension`` (scipy's
``ncv``), ``tol`` and ``max_iter`` (scipy's ``maxiter``)) on a
:class:`~scipy.sparse.linalg.LinearOperator` whose products are curvature-vector products over
the fit data. When ``rank >= size - 1`` for a block (where ARPACK cannot run) its explicit
matrix and :func:`torch.linalg.eigh` are used, so ``rank = n_params`` is exact.

Repeated eigenvalues. Lanczos from one start vector sees one direction per eigenspace (in exact
arithmetic), so ``eigsh`` can miss copies of a repeated eigenvalue (a least-squares Hessian of a
model with ``k`` outputs has every eigenvalue ``k`` times) and return a wrong truncation. After
the first ``eigsh`` the operator is therefore deflated (``P C P`` with ``P`` projecting out the
eigenvectors found) and ``eigsh`` is run on it: any eigenvalue larger in magnitude than the
smallest kept one (by more than ``max(10 * tol, 1e-8)`` relative) is a missed copy; those are
added and the check repeats until it finds none (at most ``rank`` rounds; otherwise a
:class:`~infl_array.torch.full.diagnostics.ConvergenceWarning` says what to change). A final
Rayleigh-Ritz step on all vectors found gives the eigenpairs kept. The check costs one extra
``eigsh`` per block when nothing was missed. Kept eigenvalues with ``mu + lambda <= 0`` (an
indefinite curvature) emit :class:`~infl_array.torch.full.diagnostics.IndefiniteHessianWarning` and
are recorded in ``diagnostics()``.

With ``C_bb ~ V diag(mu) V^T`` the factors are (pyDVL's ``LowRankOperator``)

* ``use_woodbury=False`` (pyDVL's default): test ``diag(1 / (mu + lambda)) V^T g_test``, train
  ``V^T g_train`` (``rank`` columns per block), i.e. ``V (D + lambda)^-1 V^T``;
* ``use_woodbury=True``: test ``(V diag(mu) V^T + lambda*Id)^-1 g_test`` by the Woodbury
  identity (full width; needs ``lambda > 0``), train ``g_train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn

from infl_array.torch.data.options import (
    check_seed,
    optional_positive_int,
    parse_hessian_average,
    positive_int,
)
from infl_array.torch.full.base import DEFAULT_MEMORY_BUDGET, TorchInfluenceBase
from infl_array.torch.full.diagnostics import (
    NOT_CONVERGED,
    NOT_POSITIVE_DEFINITE,
    ConvergenceWarning,
    IndefiniteHessianWarning,
    rounding_level,
)
from infl_array.torch.full.functional import LossFn, nonnegative
from infl_array.torch.full.lowrank import LowRank
from infl_array.torch.full.param_blocks import BlockMode, BlockStructure, SecondOrderMode

__all__ = ["ArnoldiInfluence"]


class ArnoldiInfluence(TorchInfluenceBase):
    """Influence via the top eigenpairs of the curvature.

    Arguments follow pyDVL 0.10's ``ArnoldiInfluence`` (names, order, defaults and meaning); the
    keyword-only ones after them are ours.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float, None or dict
        ``lambda >= 0`` (``None``: 0; a dict sets it per block); ``> 0`` with ``use_woodbury``.
    rank : int
        Eigenpairs kept per block (all of a block smaller than ``rank``); at most the number of
        parameters.
    krylov_dimension : int or None
        Lanczos basis size (scipy's ``ncv``, ``> rank``); ``None``:
        ``min(size, max(2*rank + 1, 20))``.
    tol : float
        Relative accuracy of the eigenvalues (scipy's ``tol``; 0 means machine precision).
    max_iter : int or None
        Maximum Arnoldi restarts (scipy's ``maxiter``); ``None``: scipy's default.
    eigen_computation_on_gpu : bool
        Must be False: the Lanczos iteration runs in scipy on the CPU (pyDVL's cupy path is not
        offered); the curvature products still run on the model's device.
    block_structure : BlockMode or mapping
        Parameter blocks of a block-diagonal curvature (:mod:`~infl_array.torch.full.param_blocks`).
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    use_woodbury : bool
        Invert ``V diag(mu) V^T + lambda*Id`` exactly (Woodbury) instead of projecting onto
        ``V`` (see the module docstring).
    seed : int
        Seed of the deterministic Lanczos start vectors.
    hessian_average : {"sample", "batch"}
        ``"batch"`` weights the fit DataLoader's batches equally, as pyDVL's operators do.
    batch_size : int or None
        Samples per pass over the data (see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).
    memory_budget : int
        Bytes the built state, the solves' working space and the arrays made from the backend
        may hold together (default 4 GiB; see
        :class:`~infl_array.torch.full.base.TorchInfluenceBase`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any = None,
        rank: int = 10,
        krylov_dimension: int | None = None,
        tol: float = 1e-6,
        max_iter: int | None = None,
        eigen_computation_on_gpu: bool = False,
        block_structure: BlockStructure = BlockMode.FULL,
        second_order_mode: SecondOrderMode = SecondOrderMode.HESSIAN,
        use_woodbury: bool = False,
        *,
        seed: int = 0,
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
            positive_regularization=bool(use_woodbury),
            memory_budget=memory_budget,
        )
        self.rank = positive_int(rank, "rank")
        self.krylov_dimension = optional_positive_int(krylov_dimension, "krylov_dimension")
        if self.krylov_dimension is not None and self.krylov_dimension <= self.rank:
            raise ValueError(
                f"krylov_dimension must exceed rank ({self.rank}), got {krylov_dimension}; pass "
                f"e.g. krylov_dimension={max(2 * self.rank + 1, 20)} or None."
            )
        self.tol = nonnegative(tol, "tol")
        self.max_iter = optional_positive_int(max_iter, "max_iter")
        if eigen_computation_on_gpu:
            raise ValueError(
                "eigen_computation_on_gpu=True is not supported: the Lanczos iteration runs in "
                "scipy on the CPU (the curvature products still run on the model's device); "
                "pass eigen_computation_on_gpu=False."
            )
        self.use_woodbury = bool(use_woodbury)
        self.seed = check_seed(seed)
        self._hessian_average = parse_hessian_average(hessian_average)
        self._low_rank: list[LowRank] = []

    def _settings(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "krylov_dimension": self.krylov_dimension,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "use_woodbury": self.use_woodbury,
            "seed": self.seed,
            "hessian_average": self._hessian_average,
        }

    @property
    def low_rank_(self) -> list[LowRank]:
        """The kept eigenpairs of every block (``[]`` before fit; computed on first use)."""
        return list(self._fitted_state("_low_rank", []))

    @property
    def eigenvalues_(self) -> torch.Tensor | None:
        """Kept eigenvalues of all blocks, concatenated in block order (``None`` before fit)."""
        return torch.cat([lr.eigenvalues for lr in self.low_rank_]) if self.low_rank_ else None

    @property
    def eigenvectors_(self) -> torch.Tensor | None:
        """Kept eigenvectors, block-diagonal ``(n_params, n_kept)`` (``None`` before fit)."""
        return torch.block_diag(*[lr.vectors for lr in self.low_rank_]) if self.low_rank_ else None

    def _fit(self) -> None:
        if self.rank > self.n_params:
            raise ValueError(
                f"rank={self.rank} exceeds the number of parameters ({self.n_params}); "
                f"pass rank <= {self.n_params}."
            )

    def _build(self) -> None:
        flat = self._require_fit()
        low_rank: list[LowRank] = []
        indefinite: list[str] = []
        for b, (name, size, reg) in enumerate(
            zip(self._blocks.names, self._blocks.sizes, self._block_reg, strict=True)
        ):
            k = min(self.rank, size)
            if k >= size - 1:
                eye = torch.eye(size, dtype=flat.dtype, device=flat.device)
                mat = self.block_matmat(b, eye)
                evals, evecs = torch.linalg.eigh((mat + mat.T) / 2)
            else:
                evals, evecs = self._lanczos(b, size, k)
            order = torch.argsort(evals.abs(), descending=True)[:k]
            evals, evecs = evals[order], evecs[:, order]
            if not self.use_woodbury:
                shifted = evals + reg
                if bool((shifted.abs() <= torch.finfo(evals.dtype).eps * evals.abs().max()).any()):
                    where = f" of block {name!r}" if len(self._blocks.sizes) > 1 else ""
                    raise ValueError(
                        f"an eigenvalue{where} plus regularization is ~0 (regularization="
                        f"{reg}); increase regularization or lower rank."
                    )
            lowest = float(evals.min()) + reg
            if lowest < -rounding_level(evals + reg, size):
                where = f" of block {name!r}" if len(self._blocks.sizes) > 1 else ""
                indefinite.append(
                    f"smallest kept eigenvalue{where} plus regularization {lowest:.3g}"
                )
            low_rank.append(LowRank(evals, evecs))
        self._low_rank = low_rank
        if indefinite:
            self._diagnostics.note(
                NOT_POSITIVE_DEFINITE,
                f"ArnoldiInfluence: the kept eigenpairs of C + regularization*Id are not all "
                f"positive: {'; '.join(indefinite)} (regularization={self.regularization}). "
                "Influence values invert negative curvature and are unreliable (the model is "
                "not at a minimum of the training loss). Increase regularization, or use "
                "second_order_mode=SecondOrderMode.GAUSS_NEWTON (positive semi-definite).",
                IndefiniteHessianWarning,
                stacklevel=4,
            )

    def _numpy_operator(self, b: int, size: int, deflate: np.ndarray | None) -> LinearOperator:
        flat = self._require_fit()

        def matmat(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, dtype=np.float64).reshape(size, -1)
            if deflate is not None:
                v = v - deflate @ (deflate.T @ v)
            vt = torch.as_tensor(v).to(device=flat.device, dtype=flat.dtype)
            out = self.block_matmat(b, vt).detach().cpu().double().numpy()
            if deflate is not None:
                out = out - deflate @ (deflate.T @ out)
            return out

        return LinearOperator(
            (size, size), matvec=lambda v: matmat(v).ravel(), matmat=matmat, dtype=np.float64
        )

    def _eigsh(
        self, b: int, size: int, k: int, deflate: np.ndarray | None, round_: int
    ) -> tuple[np.ndarray, np.ndarray]:
        ncv = self._ncv(size, k)
        v0 = np.random.default_rng([self.seed, b, round_]).standard_normal(size)
        if deflate is not None:
            v0 = v0 - deflate @ (deflate.T @ v0)
        op = self._numpy_operator(b, size, deflate)
        try:
            return eigsh(op, k=k, which="LM", ncv=ncv, v0=v0, tol=self.tol, maxiter=self.max_iter)
        except ArpackNoConvergence as err:
            self._diagnostics.note(
                NOT_CONVERGED,
                f"ArnoldiInfluence: ARPACK did not converge (rank={self.rank}, krylov_dimension="
                f"{self.krylov_dimension}, tol={self.tol}, max_iter={self.max_iter}); using the "
                f"{len(err.eigenvalues)} eigenpairs that did. Increase max_iter or "
                "krylov_dimension, or loosen tol.",
                ConvergenceWarning,
                stacklevel=6,
            )
            return err.eigenvalues, err.eigenvectors

    def _ncv(self, size: int, k: int) -> int:
        """ARPACK's Lanczos basis size (pyDVL's ``krylov_dimension``, scipy's default)."""
        return min(size, self.krylov_dimension or max(2 * k + 1, 20))

    def _lanczos_bytes(self, size: int, k: int) -> int:
        """What the eigen-solve of one block holds at its peak, in float64 vectors of ``size``:
        ARPACK's basis (``ncv``), its work vectors and start (5), the operator's conversions and
        deflated copies (4), the eigenvectors found, their orthonormal basis and a deflation
        round's (``3 k``); the curvature passes hold their own."""
        return 8 * size * (self._ncv(size, k) + 9 + 3 * k)

    def _lanczos(self, b: int, size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` eigenpairs of block ``b`` by ``eigsh``, checked for missed copies, the
        iteration's working space held in the memory budget."""
        what = (
            f"{type(self).__name__}'s Lanczos iteration (ARPACK's basis of "
            f"{self._ncv(size, k)} float64 vectors of {size:,})"
        )
        fix = "raise memory_budget, or lower rank or krylov_dimension."
        with self.budget.hold(self._lanczos_bytes(size, k), what, fix):
            return self._lanczos_held(b, size, k)

    def _lanczos_held(self, b: int, size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_lanczos` once its working space is held."""
        flat = self._require_fit()
        vals, vecs = self._eigsh(b, size, k, None, 0)
        if vals.size == 0:
            raise RuntimeError(
                f"ArnoldiInfluence: ARPACK found no eigenpair of block {self._blocks.names[b]!r} "
                f"(max_iter={self.max_iter}, tol={self.tol}); increase max_iter or "
                "krylov_dimension, or loosen tol."
            )
        delta = max(10 * self.tol, 1e-8)
        verified = False
        for round_ in range(1, self.rank + 1):
            basis, _ = np.linalg.qr(vecs)
            if basis.shape[1] + k >= size:  # nearly everything found: finish exactly below
                vals = np.zeros(0)
                break
            kth = np.sort(np.abs(vals))[::-1][min(k, len(vals)) - 1]
            more_vals, more_vecs = self._eigsh(b, size, k, basis, round_)
            missed = np.abs(more_vals) > kth * (1 + delta)
            if not missed.any():
                verified = True
                break
            vals = np.concatenate([vals, more_vals[missed]])
            vecs = np.concatenate([vecs, more_vecs[:, missed]], axis=1)
        if vals.size == 0:  # the space is (almost) exhausted: the exact eigendecomposition
            eye = torch.eye(size, dtype=flat.dtype, device=flat.device)
            mat = self.block_matmat(b, eye)
            return torch.linalg.eigh((mat + mat.T) / 2)
        if not verified:
            self._diagnostics.note(
                NOT_CONVERGED,
                f"ArnoldiInfluence: after {self.rank} deflation rounds block "
                f"{self._blocks.names[b]!r} still shows eigenvalues larger than the smallest "
                f"kept one (repeated or clustered eigenvalues); the rank-{k} truncation may be "
                "inexact. Increase krylov_dimension, lower tol, or use DirectInfluence.",
                ConvergenceWarning,
                stacklevel=5,
            )
        # Rayleigh-Ritz on everything found: refined eigenpairs within that space
        q = torch.as_tensor(np.linalg.qr(vecs)[0]).to(device=flat.device, dtype=flat.dtype)
        t = q.T @ self.block_matmat(b, q)
        mu, w = torch.linalg.eigh((t + t.T) / 2)
        return mu, q @ w

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        parts = []
        for sl, lr, reg in zip(self._blocks.slices, self.low_rank_, self._block_reg, strict=True):
            g = grads[:, sl]
            parts.append(
                lr.woodbury_solve(g, reg) if self.use_woodbury else lr.projected_solve(g, reg)
            )
        return torch.cat(parts, dim=1)

    def _project(self, grads: torch.Tensor) -> torch.Tensor:
        if self.use_woodbury:
            return grads
        pairs = zip(self._blocks.slices, self.low_rank_, strict=True)
        return torch.cat([grads[:, sl] @ lr.vectors for sl, lr in pairs], dim=1)
