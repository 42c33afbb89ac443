"""Preconditioners of conjugate gradient, with pyDVL 0.10's names, arguments and meaning.

For a system ``(A + lambda*Id) x = b`` a preconditioner is a matrix ``M`` with
``M^-1 (A + lambda*Id)`` better conditioned than ``A + lambda*Id``; CG then applies ``M^-1`` to
every residual (:class:`~infl_array.torch.full.cg.CgInfluence`, ``preconditioner=``).

* :class:`JacobiPreconditioner` (``num_samples_estimator=1``): ``M = diag(d) + lambda*Id`` with
  ``d`` Hutchinson's estimate of the diagonal of ``A``,
  ``d = 1/m sum_i u_i * (A u_i)`` over ``m`` standard normal vectors ``u_i``. Good for
  diagonally dominant matrices. The estimate is noisy and can be negative where the true
  diagonal is positive; CG needs a positive definite preconditioner, so entries of
  ``d + lambda`` that are not positive are replaced by the mean absolute entry (pyDVL 0.10 uses
  them as they are, and its CG can then fail). Raising ``num_samples_estimator`` improves it.
* :class:`NystroemPreconditioner` (``rank``): from a randomised Nystroem approximation
  ``A ~ U diag(s) U^T`` (:func:`~infl_array.torch.full.lowrank.nystroem_from_sketch`),
  ``M^-1 = (lambda + s_min) U diag(1/(s + lambda)) U^T + (Id - U U^T)``, with ``s_min`` the
  smallest kept eigenvalue.

Both draw their random vectors from torch's global generator, as pyDVL does (seed it with
``torch.manual_seed`` for reproducible draws), or from a generator seeded with ``seed=``. CG
converges to its tolerance whatever the draw; only the number of iterations changes.

A preconditioner is fitted per parameter block: :meth:`Preconditioner.fit` receives the block's
(unregularised) matrix product and regularization and returns the fitted object. Fitting has
two parts, usable apart: :meth:`Preconditioner.draw` draws the random vectors (cheap; CG does
it at ``fit``, so a seeded global generator gives the same draw as pyDVL) and
:meth:`Preconditioner.complete` makes the products with the matrix (CG defers it to its first
solve).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from infl_array.torch.data.options import check_seed, positive_int
from infl_array.torch.full.functional import nonnegative
from infl_array.torch.full.lowrank import (
    LowRank,
    gaussian_matrix,
    make_generator,
    nystroem_from_sketch,
    nystroem_sketch,
)

__all__ = ["JacobiPreconditioner", "NystroemPreconditioner", "Preconditioner"]

_P = TypeVar("_P", bound="Preconditioner")


class Preconditioner(ABC):
    """Base class: ``fit`` to ``(A, lambda)``, then ``solve`` applies ``M^-1``."""

    seed: int | None
    _reg: float | None = None

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""

    @property
    def regularization(self) -> float | None:
        """The ``lambda`` it was fitted with."""
        return self._reg

    def fit(
        self: _P,
        matmat: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        regularization: float | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> _P:
        """Fit to ``A + regularization*Id``: :meth:`draw`, then :meth:`complete`.

        Parameters
        ----------
        matmat : callable
            ``V (size, m) -> A V``.
        size : int
            Size of ``A``.
        regularization : float or None
            ``lambda >= 0`` (``None``: 0).
        dtype, device
            Of the products and of the fitted preconditioner.

        Returns
        -------
        self
        """
        return self.draw(size, regularization, dtype=dtype, device=device).complete(matmat)

    def draw(
        self: _P,
        size: int,
        regularization: float | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> _P:
        """The random (cheap) part of :meth:`fit`: draw the random vectors, no product with
        ``A`` yet (arguments as in :meth:`fit`). Returns ``self``."""
        reg = None if regularization is None else nonnegative(regularization, "regularization")
        self._draw(positive_int(size, "size"), dtype, torch.device(device))
        self._reg = reg
        return self

    def complete(self: _P, matmat: Callable[[torch.Tensor], torch.Tensor]) -> _P:
        """The products with ``A`` (the expensive part of :meth:`fit`), after :meth:`draw`.

        Returns ``self``, fitted.
        """
        if not self.is_drawn:
            raise RuntimeError(
                f"{type(self).__name__}.complete needs its random draw: call "
                ".draw(size, regularization) first, or .fit(matmat, size, regularization)."
            )
        self._complete(matmat)
        return self

    def drawn_copy(
        self: _P,
        size: int,
        regularization: float | None,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> _P:
        """A drawn copy, to :meth:`complete` later (``self`` stays an unfitted template, as
        pyDVL's ``copy.copy``)."""
        return copy.copy(self).draw(size, regularization, dtype=dtype, device=device)

    @property
    @abstractmethod
    def is_drawn(self) -> bool:
        """Whether :meth:`draw` has run and :meth:`complete` has not."""

    @abstractmethod
    def _draw(self, size: int, dtype: torch.dtype, device: torch.device) -> None: ...

    @abstractmethod
    def _complete(self, matmat: Callable[[torch.Tensor], torch.Tensor]) -> None: ...

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``M^-1 rhs`` for ``rhs`` of shape ``(size,)`` or ``(size, m)`` (columns).

        Raises
        ------
        RuntimeError
            Before :meth:`fit`.
        """
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; pass it to CgInfluence(preconditioner=...)"
                " (which fits it) or call .fit(matmat, size, regularization) first."
            )
        one_dim = rhs.ndim == 1
        out = self._solve(rhs.unsqueeze(1) if one_dim else rhs)
        return out.squeeze(1) if one_dim else out

    @abstractmethod
    def _solve(self, rhs: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able name and arguments (for ``influence_config``)."""


class JacobiPreconditioner(Preconditioner):
    """Diagonal preconditioner from Hutchinson's estimate of the diagonal (pyDVL's meaning).

    Parameters
    ----------
    num_samples_estimator : int
        Number of random vectors of Hutchinson's estimator.
    seed : int or None
        Seed of the random vectors; ``None``: torch's global generator (pyDVL's behaviour).

    Examples
    --------
    >>> import torch
    >>> a = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    >>> pre = JacobiPreconditioner(num_samples_estimator=3, seed=0).fit(lambda v: a @ v, 3)
    >>> bool(pre.is_fitted), pre.solve(torch.ones(3, dtype=torch.float64)).shape
    (True, torch.Size([3]))
    """

    def __init__(self, num_samples_estimator: int = 1, *, seed: int | None = None) -> None:
        self.num_samples_estimator = positive_int(num_samples_estimator, "num_samples_estimator")
        self.seed = check_seed(seed, global_ok=True)
        self._diag: torch.Tensor | None = None
        self._probes: torch.Tensor | None = None

    @property
    def is_fitted(self) -> bool:
        return self._diag is not None

    @property
    def is_drawn(self) -> bool:
        return self._probes is not None

    def _draw(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        gen = make_generator(self.seed, device)
        # drawn as pyDVL draws them (num_samples, size), used as columns
        self._probes = gaussian_matrix(
            self.num_samples_estimator, size, dtype=dtype, device=device, generator=gen
        ).T

    def _complete(self, matmat: Callable[[torch.Tensor], torch.Tensor]) -> None:
        u = self._probes
        assert u is not None
        self._diag = (u * matmat(u)).sum(1) / self.num_samples_estimator
        self._probes = None

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        assert self._diag is not None
        diag = self._diag if self._reg is None else self._diag + self._reg
        floor = diag.abs().mean().clamp(min=torch.finfo(diag.dtype).tiny)
        diag = torch.where(diag > 0, diag, floor)  # keep M positive definite (see module doc)
        return rhs / diag.unsqueeze(1)

    def config(self) -> dict[str, Any]:
        return {
            "name": type(self).__name__,
            "num_samples_estimator": self.num_samples_estimator,
            "seed": self.seed,
        }


class NystroemPreconditioner(Preconditioner):
    """Low-rank preconditioner from a randomised Nystroem approximation (pyDVL's meaning).

    Parameters
    ----------
    rank : int
        Rank of the Nystroem approximation.
    seed : int or None
        Seed of the random sketch; ``None``: torch's global generator (pyDVL's behaviour).

    Examples
    --------
    >>> import torch
    >>> a = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    >>> pre = NystroemPreconditioner(rank=2, seed=0).fit(lambda v: a @ v, 3, 0.1)
    >>> pre.solve(torch.ones(3, 2, dtype=torch.float64)).shape
    torch.Size([3, 2])
    """

    def __init__(self, rank: int, *, seed: int | None = None) -> None:
        self.rank = positive_int(rank, "rank")
        self.seed = check_seed(seed, global_ok=True)
        self._low_rank: LowRank | None = None
        self._omega: torch.Tensor | None = None

    @property
    def is_fitted(self) -> bool:
        return self._low_rank is not None

    @property
    def low_rank_approx(self) -> LowRank | None:
        """The fitted approximation ``U diag(s) U^T``."""
        return self._low_rank

    @property
    def is_drawn(self) -> bool:
        return self._omega is not None

    def _draw(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        gen = make_generator(self.seed, device)
        self._omega, _ = nystroem_sketch(size, self.rank, dtype=dtype, device=device, generator=gen)

    def _complete(self, matmat: Callable[[torch.Tensor], torch.Tensor]) -> None:
        assert self._omega is not None
        self._low_rank = nystroem_from_sketch(matmat, self._omega)
        self._omega = None

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        assert self._low_rank is not None
        u, s = self._low_rank.vectors, self._low_rank.eigenvalues
        s_min = s[-1]
        if self._reg is not None:
            s, s_min = s + self._reg, s_min + self._reg
        ut_b = u.T @ rhs
        return u @ (ut_b * (s_min / s).unsqueeze(1)) + rhs - u @ ut_b

    def config(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "rank": self.rank, "seed": self.seed}
