"""Low-rank curvature approximations and their regularised inverses.

A low-rank approximation ``C ~ U diag(s) U^T`` (orthonormal ``U`` of shape ``(p, k)``) is held
by :class:`LowRank`. Two inverse actions on a gradient ``g`` are used (pyDVL's
``LowRankOperator``):

* projected (``exact=False``): ``U diag(1 / (s + lambda)) U^T g``, which ignores the
  complement of ``U`` (ArnoldiInfluence with ``use_woodbury=False``);
* Woodbury (``exact=True``): ``(U diag(s) U^T + lambda*Id)^-1 g
  = U diag(1/(s + lambda) - 1/lambda) U^T g + g / lambda``, exact for the low-rank matrix plus
  ``lambda*Id`` (NystroemSketchInfluence, ArnoldiInfluence with ``use_woodbury=True``).

:func:`nystroem_sketch` and :func:`nystroem_from_sketch` are pyDVL 0.10's randomised Nystroem
approximation (``randomized_nystroem_approximation``) step for step, cut into its random draw
and its products: ``Omega`` is the Q factor of a standard
normal ``(p, k)`` matrix, ``Y = C Omega + nu Omega`` with the stabilising shift
``nu = sqrt(p) * eps(dtype) * ||C Omega||_F``, ``L = chol(Omega^T Y)``, ``U s' V^T = svd(Y L^-T)``
and ``s = max(s'^2 - nu, 0)``, so ``U diag(s) U^T = (C Omega)(Omega^T C Omega)^+ (C Omega)^T``
up to the shift. Its random matrix is drawn by :func:`gaussian_matrix`: from a
``torch.Generator`` seeded by the caller, or (``generator=None``) from torch's global generator
with the same call pyDVL makes, so ``torch.manual_seed`` before ``fit`` reproduces pyDVL's draw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from infl_array.torch.data.views import tensor_buffer

__all__ = [
    "LowRank",
    "gaussian_matrix",
    "make_generator",
    "nystroem_from_sketch",
    "nystroem_sketch",
]

MatMat = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LowRank:
    """``U diag(eigenvalues) U^T`` with orthonormal columns ``vectors`` (``(p, k)``)."""

    eigenvalues: torch.Tensor
    vectors: torch.Tensor

    def projected_solve(self, rows: torch.Tensor, regularization: float) -> torch.Tensor:
        """Coefficients ``diag(1/(s + lambda)) U^T g`` of each row ``g``, ``(n, k)``."""
        return (rows @ self.vectors) / (self.eigenvalues + regularization)

    def woodbury_solve(self, rows: torch.Tensor, regularization: float) -> torch.Tensor:
        """``(U diag(s) U^T + lambda*Id)^-1 g`` for each row ``g`` (``lambda > 0``), ``(n, p)``."""
        coef = 1.0 / (self.eigenvalues + regularization) - 1.0 / regularization
        return rows / regularization + ((rows @ self.vectors) * coef) @ self.vectors.T


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded with ``seed``, or ``None`` (torch's global generator)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def gaussian_matrix(
    rows: int,
    cols: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Standard normal ``(rows, cols)`` matrix (pyDVL draws with ``torch.randn`` likewise)."""
    if generator is None:
        return torch.randn(rows, cols, device=device, dtype=dtype)
    return torch.randn(rows, cols, device=device, dtype=dtype, generator=generator)


def nystroem_sketch(
    size: int,
    rank: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, str]:
    """The random part of the Nystroem approximation: ``Omega`` and its sha256 digest.

    Cheap (no operator product), so backends draw it at ``fit`` and defer the products
    (:func:`nystroem_from_sketch`).

    Parameters
    ----------
    size, rank : int
        Operator size and sketch width.
    dtype, device, generator
        Of the random sketch (see :func:`gaussian_matrix`).

    Returns
    -------
    (torch.Tensor, str)
        ``Omega``, the Q factor of a standard normal ``(size, rank)`` matrix (pyDVL's draw;
        at most ``size`` columns), and a digest identifying the draw.
    """
    omega = gaussian_matrix(size, rank, dtype=dtype, device=device, generator=generator)
    omega, _ = torch.linalg.qr(omega)
    return omega, hashlib.sha256(tensor_buffer(omega)).hexdigest()


AFTER_PRODUCT = 4
"""Matrices of the sketch's size :func:`nystroem_from_sketch` holds after its product (the
product, the triangular solve's result, the SVD's factor and its workspace)."""


def nystroem_from_sketch(
    matmat: MatMat,
    omega: torch.Tensor,
    hold: Callable[[int], AbstractContextManager[None]] | None = None,
) -> LowRank:
    """Randomised Nystroem approximation of a symmetric positive semi-definite operator.

    Parameters
    ----------
    matmat : callable
        ``V (size, m) -> C V`` (one call, with ``Omega``).
    omega : torch.Tensor
        The sketch of :func:`nystroem_sketch`.
    hold : callable, optional
        ``hold(nbytes)``, a context manager holding the working space after the product
        (:data:`AFTER_PRODUCT` matrices of the sketch's size) in a memory budget.

    Returns
    -------
    LowRank
        ``U diag(s) U^T ~ C`` (see the module docstring).
    """
    sketch = matmat(omega)
    held = AFTER_PRODUCT * sketch.numel() * sketch.element_size()
    with nullcontext() if hold is None else hold(held):
        return _from_product(omega, sketch)


def _from_product(omega: torch.Tensor, sketch: torch.Tensor) -> LowRank:
    """:func:`nystroem_from_sketch` once the product ``sketch = C Omega`` is made."""
    size, dtype = omega.shape[0], omega.dtype
    shift = math.sqrt(size) * torch.finfo(dtype).eps * torch.linalg.norm(sketch)
    sketch.add_(omega, alpha=float(shift))
    core = omega.T @ sketch
    chol, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:  # pyDVL's fallback: lift the spectrum by its most negative eigenvalue
        evals, evecs = torch.linalg.eigh(core)
        shift = shift + evals.min().abs()
        evals = evals + shift
        chol = torch.linalg.cholesky((evecs * evals) @ evecs.T)
    b = torch.linalg.solve_triangular(chol.T, sketch, upper=True, left=False)
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    return LowRank(torch.clamp(s**2 - shift, min=0), u)
