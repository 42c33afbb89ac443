"""Kronecker-factored curvature of one layer: K-FAC factors, their eigenbasis, EK-FAC.

A layer's per-sample gradient is a ``(d_out, d_in)`` matrix ``M_i = sum_t g_{i,t} a_{i,t}^T``
(:mod:`~infl_array.torch.layerwise.capture`; here ``d_in`` counts the bias column, and both sides
may be randomly projected first, :mod:`~infl_array.torch.layerwise.projected`). Its curvature block
is approximated as follows (George et al. 2018, "Fast approximate natural gradient descent in a
Kronecker-factored eigenbasis"; Grosse et al. 2023, "Studying large language model
generalization with influence functions"):

1. **Factors** (one pass): ``A = (1/n) sum_i sum_t a a^T`` and ``G = (1/n) sum_i sum_t g g^T``,
   sums over the positions of each sample and the mean over samples (pyDVL 0.10's convention;
   ``g`` are the curvature (pseudo-)gradients, see ``fisher_type`` of the backends).
2. **Eigenbasis**: ``A = Q_A diag(s_A) Q_A^T``, ``G = Q_G diag(s_G) Q_G^T`` (``eigh`` in float64).
3. **Eigenvalues**: K-FAC's ``Lambda[o, i] = s_G[o] s_A[i] / T`` with ``T`` the mean number of
   positions per sample (KFC's scaling, Grosse & Martens 2016: positions are assumed
   independent, so the sum of ``T`` outer products over-counts by ``T``; ``T = 1`` for a layer
   that sees one position per sample, where this is pyDVL's ``s_G s_A``). EK-FAC replaces them
   (``update_diagonal``, a second pass) by ``Lambda = (1/n) sum_i (Q_G^T M_i Q_A)**2``, the
   second moments of the per-sample gradients in the eigenbasis.
4. **Solve**: ``(Q (Lambda + lambda) Q^T)^-1 M = Q_G [(Q_G^T M Q_A) / (Lambda + lambda)] Q_A^T``,
   with ``Q = Q_G (x) Q_A``: the exact inverse of the regularised Kronecker-factored matrix.
"""

from __future__ import annotations

import threading

import torch

from infl_array.engine.budget import Budget
from infl_array.torch.layerwise.capture import sample_chunks

__all__ = ["KroneckerCurvature", "eigh"]

SERIAL_EIGH_MAX = 2048
"""Order up to which :func:`eigh` runs on one CPU thread."""

_threads_lock = threading.Lock()


def eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh(m)``, on one thread for CPU matrices of order <= ``SERIAL_EIGH_MAX``.

    LAPACK's threaded symmetric eigensolver gains little at these orders (its tridiagonal
    reduction is memory-bound), and its threads wait on each other when the cores are busy:
    with 2 threads on 2 shared cores, one 433 x 433 eigh took 0.2 to 6 s, on one thread 0.03
    to 0.17 s. The thread count is restored after, under a lock, so concurrent callers do not
    leave it at one.
    """
    if m.device.type != "cpu" or m.shape[-1] > SERIAL_EIGH_MAX:
        return torch.linalg.eigh(m)
    with _threads_lock:
        threads = torch.get_num_threads()
        if threads == 1:
            return torch.linalg.eigh(m)
        torch.set_num_threads(1)
        try:
            return torch.linalg.eigh(m)
        finally:
            torch.set_num_threads(threads)


class KroneckerCurvature:
    """EK-FAC curvature of one layer in a ``(d_out, d_in)`` working space.

    Parameters
    ----------
    d_out, d_in : int
        Shape of the layer's (possibly projected) gradient matrix.
    like : torch.Tensor
        A tensor with the dtype and device to work in.
    name : str
        The layer's name (for messages).
    diagonal_in : bool
        The input factor ``A`` is diagonal (one-hot inputs: an embedding's token rows): only
        its diagonal is accumulated and its eigenbasis is the identity (``q_a`` stays None), so
        nothing of size ``d_in**2`` is formed. The activations may then be given as token ids
        ``(n, T)`` (integers; ``-1`` for a position whose token gets no gradient) instead of
        one-hot rows: nothing of size ``T * d_in`` is formed either.

    Attributes
    ----------
    max_positions : int
        Most positions per sample seen while accumulating the factors.
    eigenvalues : torch.Tensor or None
        ``Lambda``, ``(d_out, d_in)``, after :meth:`eigendecompose` (K-FAC) or
        :meth:`finish_correction` (EK-FAC).
    """

    def __init__(
        self, d_out: int, d_in: int, like: torch.Tensor, name: str = "", diagonal_in: bool = False
    ) -> None:
        self.d_out, self.d_in, self.name = d_out, d_in, name
        self.diagonal_in = diagonal_in
        self._a_sum: torch.Tensor | None = like.new_zeros((d_in,) if diagonal_in else (d_in, d_in))
        self._g_sum: torch.Tensor | None = like.new_zeros((d_out, d_out))
        self._n = 0
        self._positions = 0
        self.max_positions = 0
        self._lambda_sum: torch.Tensor | None = None
        self._lambda_n = 0
        self.q_a: torch.Tensor | None = None
        self.q_g: torch.Tensor | None = None
        self.eigenvalues: torch.Tensor | None = None

    @staticmethod
    def nbytes(d_out: int, d_in: int, itemsize: int, diagonal_in: bool = False) -> int:
        """Bytes held while fitting: two factors, two eigenbases and two eigenvalue arrays."""
        a_side = 2 * d_in if diagonal_in else 2 * d_in * d_in
        return itemsize * (a_side + 2 * d_out * d_out + 2 * d_out * d_in)

    def rotate_in(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ Q_A`` (``a`` itself when ``A`` is diagonal)."""
        if self.diagonal_in:
            return a
        assert self.q_a is not None
        return a @ self.q_a

    def _unrotate_in(self, m: torch.Tensor) -> torch.Tensor:
        if self.diagonal_in:
            return m
        assert self.q_a is not None
        return m @ self.q_a.T

    # ------------------------------------------------------------------ factors
    def add_covariances(self, acts: torch.Tensor, grads: torch.Tensor) -> None:
        """Accumulate ``sum a a^T`` and ``sum g g^T`` over a batch.

        Parameters
        ----------
        acts : torch.Tensor
            ``(n, T, d_in)`` activations (or ``(n, T)`` token ids, see ``diagonal_in``).
        grads : torch.Tensor
            ``(n, T, d_out)`` curvature gradients.
        """
        assert self._a_sum is not None and self._g_sum is not None
        g = grads.reshape(-1, self.d_out)
        if not acts.is_floating_point():  # token ids
            ids = acts[acts >= 0]
            self._a_sum += torch.bincount(ids, minlength=self.d_in).to(self._a_sum.dtype)
        elif self.diagonal_in:
            self._a_sum += acts.reshape(-1, self.d_in).square().sum(0)
        else:
            a = acts.reshape(-1, self.d_in)
            self._a_sum.addmm_(a.T, a)
        self._g_sum.addmm_(g.T, g)
        self._n += acts.shape[0]
        self._positions += acts.shape[0] * acts.shape[1]
        self.max_positions = max(self.max_positions, acts.shape[1])

    def eigendecompose(self) -> None:
        """Eigenbases of ``A`` and ``G`` and the K-FAC eigenvalues; frees the factors."""
        assert self._a_sum is not None and self._g_sum is not None and self._n > 0
        dtype = self._a_sum.dtype
        for factor, side in ((self._a_sum, "input"), (self._g_sum, "output-gradient")):
            if not bool(torch.isfinite(factor).all()):
                raise FloatingPointError(
                    f"the {side} covariance of layer {self.name!r} has non-finite entries (NaN or "
                    "inf): the model's outputs or the loss overflow on the fit data. Check them "
                    "on that data (and use float32 or float64 for the model if it is half)."
                )
        if self.diagonal_in:
            s_a = self._a_sum.to(torch.float64) / self._n
        else:
            s_a, q_a = eigh(self._a_sum.to(torch.float64) / self._n)
            self.q_a = q_a.to(dtype)
        s_g, q_g = eigh(self._g_sum.to(torch.float64) / self._n)
        mean_positions = self._positions / self._n
        self.q_g = q_g.to(dtype)
        self.eigenvalues = (torch.outer(s_g, s_a) / mean_positions).to(dtype)
        self._a_sum = self._g_sum = None

    # ------------------------------------------------------------------ EK-FAC correction
    def add_eigenvalue_moments(
        self, acts: torch.Tensor, grads: torch.Tensor, budget: int | Budget
    ) -> None:
        """Accumulate ``sum_i (Q_G^T M_i Q_A)**2`` over a batch (per-sample gradients ``M_i``).

        Parameters
        ----------
        acts, grads : torch.Tensor
            ``(n, T, d_in)`` and ``(n, T, d_out)``, as in :meth:`add_covariances`.
        budget : int or Budget
            Bytes the per-sample temporaries may take (a budget: what it has left).
        """
        assert self.q_g is not None
        if self._lambda_sum is None:
            self._lambda_sum = self.q_g.new_zeros((self.d_out, self.d_in))
        if not acts.is_floating_point():  # token ids: a sample's tokens are its only columns
            n = acts.shape[0]
            rotated = (grads @ self.q_g) * (acts >= 0)[..., None]
            keys = torch.arange(n, device=acts.device)[:, None] * self.d_in + acts.clamp(min=0)
            columns, where = torch.unique(keys.flatten(), return_inverse=True)
            sums = rotated.new_zeros((columns.shape[0], self.d_out))
            sums.index_add_(0, where, rotated.reshape(-1, self.d_out))  # per sample and token
            self._lambda_sum.T.index_add_(0, columns % self.d_in, sums.square())
        elif acts.shape[1] == 1:  # one position: M_i = g a^T, rotated entrywise squares factor
            ga = (grads[:, 0] @ self.q_g).square()
            aa = self.rotate_in(acts[:, 0]).square()
            self._lambda_sum.addmm_(ga.T, aa)
        else:
            per_sample = 2 * self.d_out * self.d_in * acts.element_size()
            what = f"the per-sample gradients of layer {self.name!r} ({self.d_out} x {self.d_in})"
            for rows in sample_chunks(acts.shape[0], per_sample, budget, what):
                self._lambda_sum += self.rotate(acts[rows], grads[rows]).square().sum(0)
        self._lambda_n += acts.shape[0]

    def finish_correction(self) -> None:
        """Replace the K-FAC eigenvalues by the corrected ones (EK-FAC)."""
        assert self._lambda_sum is not None and self._lambda_n > 0
        self.eigenvalues = self._lambda_sum / self._lambda_n
        self._lambda_sum = None

    # ------------------------------------------------------------------ solve
    def check_invertible(self, regularization: float) -> None:
        """Refuse ``Lambda + lambda`` that is zero to rounding or negative (singular)."""
        assert self.eigenvalues is not None
        low = float((self.eigenvalues + regularization).min())
        eps = torch.finfo(self.eigenvalues.dtype).eps
        tol = 10 * eps * float(self.eigenvalues.abs().max())  # rounding of a zero eigenvalue
        if not low > tol:
            raise ValueError(
                f"the Kronecker-factored curvature of layer {self.name!r} is singular: its "
                f"smallest eigenvalue plus regularization is {low:.3g} (regularization="
                f"{regularization}). Pass a regularization > 0, e.g. 1e-3 times the mean "
                f"eigenvalue ({float(self.eigenvalues.mean()):.3g})."
            )

    def rotate(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``Q_G^T M_i Q_A`` of the per-sample gradients ``M_i = sum_t g_t a_t^T``.

        ``acts``, ``grads``: ``(n, T, d_in)`` and ``(n, T, d_out)``. With few positions
        (``T * (d_out + d_in) < d_out * d_in``, e.g. a late convolution) the positions are
        rotated before they are summed, which costs ``T * (d_out**2 + d_in**2)`` instead of
        ``d_out * d_in * (d_out + d_in)`` per sample; the result is the same up to rounding.
        """
        assert self.q_g is not None
        positions = acts.shape[1]
        if not acts.is_floating_point():  # token ids: scatter the rotated output gradients
            rotated = (grads @ self.q_g) * (acts >= 0)[..., None]
            out = rotated.new_zeros((acts.shape[0], self.d_out, self.d_in))
            index = acts.clamp(min=0)[:, None, :].expand(-1, self.d_out, -1)
            return out.scatter_add_(2, index, rotated.transpose(1, 2))
        if positions * (self.d_out + self.d_in) < self.d_out * self.d_in:
            return (grads @ self.q_g).transpose(1, 2) @ self.rotate_in(acts)
        return self.rotate_in(self.q_g.T @ (grads.transpose(1, 2) @ acts))

    def solve_rotated(self, rotated: torch.Tensor, regularization: float) -> torch.Tensor:
        """``(H_layer + lambda*Id)^-1 M``, ``(n, d_out, d_in)``, from ``Q_G^T M Q_A``."""
        assert self.q_g is not None and self.eigenvalues is not None
        return self._unrotate_in(self.q_g @ self.precondition_rotated(rotated, regularization))

    def precondition_rotated(self, rotated: torch.Tensor, regularization: float) -> torch.Tensor:
        """``Q_G^T (H_layer + lambda*Id)^-1 M Q_A`` from ``Q_G^T M Q_A`` (stays rotated)."""
        assert self.eigenvalues is not None
        return rotated / (self.eigenvalues + regularization)

    def solve(self, m: torch.Tensor, regularization: float) -> torch.Tensor:
        """``(H_layer + lambda*Id)^-1 m`` for per-sample gradients ``m``, ``(n, d_out, d_in)``."""
        assert self.q_g is not None and self.eigenvalues is not None
        return self.solve_rotated(self.rotate_in(self.q_g.T @ m), regularization)
