"""Projected influence: per-layer Kronecker-structured random projections (LoGra-style).

Each included layer (:mod:`~infl_array.torch.layerwise.capture`) has a ``(d_out, width_in)``
gradient ``M_i = sum_t g_t a_t^T``. It is projected on both sides separately,

    ``phi_i = P_out M_i P_in^T = sum_t (P_out g_t) (P_in a_t)^T``,  a ``(k_out, k_in)`` matrix,

so projecting costs about ``k_in * width_in + k_out * d_out`` per sample and position (for a
convolution, ``P_in a_t`` is itself a convolution with ``k_in`` filters; for an embedding,
whose ``a_t`` is a token's one-hot row, it is a column of ``P_in``, gathered; for an output
layer tied to an embedding, the embedding's one-hot rows are on the output side and are
gathered from ``P_out`` the same way), never
``d_out * width_in``: the full per-sample gradient is never formed. The projected gradients of
all layers, flattened and concatenated, are a sample's ``width``-long projected gradient.

Projections
-----------
* ``P`` (``k x d``) has orthonormal rows, scaled by ``sqrt(d / k)`` so that
  ``E[P^T P] = Id`` (projected inner products are unbiased); it spans a uniformly random
  ``k``-dimensional subspace (QR of a Gaussian matrix). A side with ``k = d`` is not projected
  (``P = Id``), so at ``projection_dim >=`` the number of included parameters every value
  equals the unprojected one exactly.
* Reproducible: the matrices are drawn in float64 on the CPU from ``torch.Generator``
  seeded with ``seed``, layer after layer (input side, then output side), then moved to the
  model's device once, at ``fit``. Same seed, same values, on any device.

How ``projection_dim`` is split among layers
--------------------------------------------
Equal shares by water-filling (:func:`split_width`): every layer gets the same width,
except that a layer never gets more than its number of parameters ``d_out * width_in``; what
small layers leave is shared equally by the others. A layer's share ``w`` becomes
``k_out x k_in`` (:func:`factor_width`, ``k_out * k_in <= w``) with equal sides
``k ~ sqrt(w)`` as in LoGra, except that a side narrower than that is kept whole and the other
side gets the rest (the 10 outputs of a classifier's last layer are not projected). The total width
(:attr:`ProjectedInfluence.width`) is therefore at most ``projection_dim`` (a few columns
less from rounding), and at least one column per layer is needed.

Preconditioners (in the projected space)
----------------------------------------
* ``"ekfac"``: per-layer EK-FAC (:mod:`~infl_array.torch.layerwise.kronecker`) of the projected
  activations and gradients: factors ``P_in A P_in^T`` and ``P_out G P_out^T``, eigenvalues
  corrected with the projected per-sample gradients. Two passes over the fit data. Its
  unprojected version is :class:`~infl_array.torch.layerwise.ekfac.EkfacInfluence` with
  ``update_diagonal=True`` (same ``fisher_type``); ``"kfac"``: without the correction
  (``update_diagonal=False``), one pass.
* ``"fisher"``: ``(F + lambda*Id)^-1`` with ``F = (1/n) sum_i phi_i phi_i^T`` the empirical
  Fisher of the projected per-sample loss gradients of the fit data (all layers jointly,
  ``width x width``, a Cholesky factorisation in float64). One pass.
* ``"identity"``: no preconditioning, no fit pass: plain inner products of projected
  gradients (``regularization`` is not used).

Factors: ``train_factors`` are the projected gradients, ``test_factors`` the preconditioned
ones, both ``(n, width)``: every block is the plain product ``test_f @ train_f.T``.

Train factors from the fit
--------------------------
A fit pass that takes the projected per-sample loss gradients of the fit data computes the
train factors of those samples: the EK-FAC eigenvalue pass and the K-FAC covariance pass with
``fisher_type="empirical"``, the projected Fisher's pass always. With
``reuse_fit_gradients=True`` (the default) they are kept
(:mod:`~infl_array.torch.layerwise.fitrows`, at most a quarter of ``memory_budget``), and
``train_factors`` returns the kept row of every sample it is asked about that was fitted on: when
the train data are the fit data, the train side of a whole fill costs no forward or backward pass.
``fisher_type="pydvl"`` fits on pseudo-gradients, not loss gradients, so nothing is kept there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from infl_array.engine.budget import Budget
from infl_array.torch.data.options import check_seed
from infl_array.torch.full.functional import LossFn
from infl_array.torch.layerwise.base import DEFAULT_MEMORY_BUDGET, LayerwiseInfluence
from infl_array.torch.layerwise.capture import LayerRecord, LayerSpec, check_budget
from infl_array.torch.layerwise.fitrows import FitRows, sample_keys
from infl_array.torch.layerwise.kronecker import KroneckerCurvature

__all__ = ["PRECONDITIONERS", "ProjectedInfluence", "factor_width", "split_width"]

PRECONDITIONERS = ("ekfac", "kfac", "fisher", "identity")
"""Accepted values of ``preconditioner``."""


def split_width(sizes: Sequence[int], total: int) -> list[int]:
    """Split ``total`` columns among layers of ``sizes`` parameters: equal, capped shares.

    Parameters
    ----------
    sizes : sequence of int
        Each layer's parameter count (the most it can use).
    total : int
        Columns to split.

    Returns
    -------
    list of int
        ``w_l = min(sizes[l], level)`` with the largest ``level`` whose sum fits ``total``
        (leftover columns go to the first uncapped layers).

    Examples
    --------
    >>> split_width([10, 1000, 1000], 100)
    [10, 45, 45]
    >>> split_width([10, 20], 100)
    [10, 20]
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    shares = [0] * len(sizes)
    remaining = total
    for rank, i in enumerate(order):
        shares[i] = min(sizes[i], remaining // (len(sizes) - rank))
        remaining -= shares[i]
    for i in range(len(sizes)):  # remainder of the integer division
        extra = min(remaining, sizes[i] - shares[i])
        shares[i] += extra
        remaining -= extra
    return shares


def factor_width(width: int, d_out: int, d_in: int) -> tuple[int, int]:
    """``(k_out, k_in)`` with ``k_out * k_in <= width``, sides as equal as the share allows.

    The narrower side gets the largest ``k <= min(d, isqrt(width))`` whose product with the
    wider side's ``min(d_wide, width // k)`` uses at least 95% of the best possible product.
    A narrow side is thus kept whole (the output side of a classifier's last layer).

    Examples
    --------
    >>> factor_width(100, 64, 16)
    (10, 10)
    >>> factor_width(682, 10, 4097)
    (10, 68)
    >>> factor_width(10_000, 64, 16)
    (64, 16)
    """
    if width >= d_out * d_in:
        return d_out, d_in
    narrow, wide = sorted((d_out, d_in))
    options = [
        (k, min(wide, width // k)) for k in range(1, min(narrow, max(1, math.isqrt(width))) + 1)
    ]
    best = max(k * w for k, w in options)
    k_narrow, k_wide = max(o for o in options if o[0] * o[1] >= 0.95 * best)
    return (k_narrow, k_wide) if d_out <= d_in else (k_wide, k_narrow)


def _projection(d: int, k: int, gen: torch.Generator) -> torch.Tensor | None:
    """Scaled orthonormal rows ``(k, d)``, or ``None`` for the identity (``k == d``)."""
    if k >= d:
        return None
    q, _ = torch.linalg.qr(torch.randn((d, k), generator=gen, dtype=torch.float64))
    return q.T * math.sqrt(d / k)


def _check_projection_dim(projection_dim: Any, n_layers: int) -> int:
    """``projection_dim`` as an int, checked: at least one column per included layer."""
    if (
        isinstance(projection_dim, bool)
        or not isinstance(projection_dim, (int, np.integer))
        or projection_dim < n_layers
    ):
        raise ValueError(
            f"projection_dim must be an integer >= the number of included layers "
            f"({n_layers}: at least one column each), got {projection_dim!r}; pass e.g. "
            "projection_dim=4096."
        )
    return int(projection_dim)


PROJECTIONS = "the random projection matrices"
FIT_ROWS = "the projected gradients kept from the fit"
FISHER = "the projected Fisher's Cholesky factor"
"""What the fitted state is held as in the memory budget (lasting holdings)."""


def _projection_entries(layers: Sequence[LayerSpec], shapes: Sequence[tuple[int, int]]) -> int:
    """Entries of the projection matrices of ``layers`` projected to ``shapes``."""
    return sum(
        k_in * spec.width_in * (k_in < spec.width_in) + k_out * spec.d_out * (k_out < spec.d_out)
        for spec, (k_out, k_in) in zip(layers, shapes, strict=True)
    )


def _check_projection_budget(
    layers: Sequence[LayerSpec],
    shapes: Sequence[tuple[int, int]],
    preconditioner: str,
    memory_budget: int | Budget,
) -> None:
    """Refuse projection matrices (and a projected Fisher) that ``memory_budget`` cannot hold
    (a :class:`~infl_array.engine.budget.Budget`: what it has left)."""
    n_proj = _projection_entries(layers, shapes)
    check_budget(
        2 * 8 * n_proj,
        memory_budget,
        f"the random projection matrices ({n_proj} entries, drawn in float64)",
        "lower projection_dim, or raise memory_budget.",
    )
    if preconditioner == "fisher":
        width = sum(k_out * k_in for k_out, k_in in shapes)
        check_budget(
            2 * width**2 * 8,
            memory_budget,
            f"the projected Fisher ({width} x {width} float64) and its Cholesky factor",
            "lower projection_dim, use preconditioner='ekfac' (per-layer factors), or raise "
            "memory_budget.",
        )


class ProjectedInfluence(LayerwiseInfluence):
    """Influence of randomly projected per-layer gradients (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (in eval mode if it has dropout or batch normalisation).
    loss : callable
        ``loss(outputs, targets)`` reducing by mean.
    regularization : float
        ``lambda >= 0`` added to the preconditioner's diagonal (not used by ``"identity"``).
    projection_dim : int
        Total width of a sample's projected gradient over all layers (an upper bound; see
        :attr:`width`).
    preconditioner : {"ekfac", "kfac", "fisher", "identity"}
        Curvature in the projected space.
    seed : int
        Seed of the random projections.
    fisher_type : {"auto", "empirical", "pydvl"}
        Gradients the K-FAC factors are estimated from (``"ekfac"``/``"kfac"`` only;
        see :mod:`~infl_array.torch.layerwise.base`).
    batch_size : int or None
        Samples per forward/backward pass.
    memory_budget : int
        Bytes that fitted state, per-sample temporaries and returned factors may take.
    progress : bool
        Show progress bars over the fit passes.
    reuse_fit_gradients : bool
        Keep the projected gradients a fit pass computes of the fit samples and return them
        from :meth:`train_factors` (see "Train factors from the fit" in the module docstring).
    strict_coverage : bool
        Raise instead of warning when trainable parameters are left out
        (:class:`~infl_array.torch.layerwise.coverage.PartialCoverageWarning`).

    Attributes
    ----------
    projection_shapes : list of tuple of int
        ``(k_out, k_in)`` of each layer, in the order of :attr:`layers`.
    fit_rows : FitRows or None
        The projected gradients kept from the fit (None when none are kept); ``fit_rows.hits``
        counts the rows :meth:`train_factors` took from it.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(40, 8, dtype=torch.float64), torch.randint(0, 3, (40,))
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
    ...                             torch.nn.Linear(16, 3)).double()
    >>> ce = torch.nn.functional.cross_entropy
    >>> infl = ProjectedInfluence(model, ce, 0.01, projection_dim=64).fit((x, y))
    >>> infl.projection_shapes, infl.width
    ([(8, 4), (2, 16)], 64)
    >>> infl.test_factors(x[:2], y[:2]).shape, infl.train_factors(x, y).shape
    (torch.Size([2, 64]), torch.Size([40, 64]))
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = 0.0,
        projection_dim: int = 4096,
        preconditioner: str = "ekfac",
        seed: int = 0,
        *,
        fisher_type: str = "auto",
        batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        progress: bool = False,
        reuse_fit_gradients: bool = True,
        strict_coverage: bool = False,
    ) -> None:
        super().__init__(
            model,
            loss,
            regularization,
            fisher_type=fisher_type,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=progress,
            strict_coverage=strict_coverage,
        )
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}."
            )
        self.seed = check_seed(seed)
        if not isinstance(reuse_fit_gradients, bool):
            raise TypeError(f"reuse_fit_gradients must be a bool, got {reuse_fit_gradients!r}.")
        self.reuse_fit_gradients = reuse_fit_gradients
        self.fit_rows: FitRows | None = None
        self.projection_dim = _check_projection_dim(projection_dim, len(self.layers))
        self.preconditioner = preconditioner
        shares = split_width([spec.n_params for spec in self.layers], self.projection_dim)
        self.projection_shapes = [
            factor_width(w, spec.d_out, spec.width_in)
            for w, spec in zip(shares, self.layers, strict=True)
        ]
        _check_projection_budget(
            self.layers, self.projection_shapes, preconditioner, self.memory_budget
        )
        self._proj: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        self.curvature: list[KroneckerCurvature] = []
        self._fisher_chol: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """Columns of a sample's projected gradient (``sum k_out * k_in <= projection_dim``)."""
        return sum(k_out * k_in for k_out, k_in in self.projection_shapes)

    @property
    def test_factor_width(self) -> int:
        """Columns of :meth:`test_factors` (:attr:`width`)."""
        return self.width

    @property
    def train_factor_width(self) -> int:
        """Columns of :meth:`train_factors` (:attr:`width`)."""
        return self.width

    def _settings(self) -> dict[str, Any]:
        return {
            "projection_dim": self.projection_dim,
            "preconditioner": self.preconditioner,
            "seed": self.seed,
            "projection_shapes": [list(s) for s in self.projection_shapes],
            **super()._settings(),
        }

    def _curvature(self) -> str:
        return (
            f"per layer, {self.preconditioner!r} preconditioner on gradients randomly projected "
            f"to {self.projection_dim} dimensions"
        )

    # ------------------------------------------------------------------ working space
    def _dims(self, i: int) -> tuple[int, int]:
        return self.projection_shapes[i]

    def _diagonal_in(self, i: int) -> bool:
        return super()._diagonal_in(i) and self._proj[i][0] is None  # one-hot when unprojected

    def _working(self, i: int, rec: LayerRecord, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        p_in, p_out = self._proj[i]
        acts = rec.activations(rows) if p_in is None else rec.projected_activations(p_in, rows)
        grads = rec.output_grads(rows) if p_out is None else rec.projected_output_grads(p_out, rows)
        return acts, grads

    # ------------------------------------------------------------------ fit
    def _fit_layers(self) -> None:
        flat = self._require_fit()
        gen = torch.Generator().manual_seed(self.seed)
        self._proj = []
        for held in (PROJECTIONS, FIT_ROWS, FISHER):  # a refit replaces them
            self.budget.release_all(held)
        self.budget.reserve(
            self._itemsize * _projection_entries(self.layers, self.projection_shapes),
            PROJECTIONS,
            "lower projection_dim, or raise memory_budget.",
            lasting=True,
        )
        for spec, (k_out, k_in) in zip(self.layers, self.projection_shapes, strict=True):
            p_in = _projection(spec.width_in, k_in, gen)
            p_out = _projection(spec.d_out, k_out, gen)
            self._proj.append(
                (
                    None if p_in is None else p_in.to(flat.device, self.work_dtype),
                    None if p_out is None else p_out.to(flat.device, self.work_dtype),
                )
            )
        self.curvature, self._fisher_chol = [], None
        self.fit_rows = self._new_fit_rows()
        if self.preconditioner in ("ekfac", "kfac"):
            self.curvature = self._fit_kronecker(
                correct=self.preconditioner == "ekfac",
                keep=self._keep_fit_rows if self.fit_rows is not None else None,
            )
        elif self.preconditioner == "fisher":
            self._fit_fisher()

    def _new_fit_rows(self) -> FitRows | None:
        """Where the fit keeps its projected gradients, or None when it keeps none."""
        flat = self._require_fit()
        assert self._fit_data is not None
        takes_loss_grads = self.preconditioner == "fisher" or (
            self.preconditioner in ("ekfac", "kfac") and self.fisher_type == "empirical"
        )
        n = len(self._fit_data)
        if not (self.reuse_fit_gradients and takes_loss_grads):
            return None
        nbytes = n * self.width * self._itemsize
        if nbytes > self.memory_budget // 4:
            return None
        if not self.budget.try_reserve(nbytes, FIT_ROWS, lasting=True):
            return None
        return FitRows(n, self.width, flat.theta.new_empty(0, dtype=self.work_dtype))

    def _keep_fit_rows(self, x: torch.Tensor, y: torch.Tensor, phi: torch.Tensor) -> None:
        """Keep the projected gradients ``phi`` of the fit batch ``(x, y)`` in :attr:`fit_rows`."""
        if self.fit_rows is not None:
            self.fit_rows.add(sample_keys(x, y), phi)

    def _fit_fisher(self) -> None:
        flat = self._require_fit()
        total = torch.zeros((self.width, self.width), dtype=self.work_dtype, device=flat.device)
        n = 0
        for x, y, records in self._fit_records("loss", "projected Fisher"):
            phi = self._project_records(records)
            self._keep_fit_rows(x, y, phi)
            total.addmm_(phi.T, phi)
            n += phi.shape[0]
        self.budget.reserve(
            self.width**2 * 8,
            FISHER,
            "lower projection_dim, use preconditioner='ekfac' (per-layer factors), or raise "
            "memory_budget.",
            lasting=True,
        )
        fisher = total.to(torch.float64) / n
        fisher.diagonal().add_(self.lam)
        chol, info = torch.linalg.cholesky_ex(fisher)
        if int(info) != 0:
            raise ValueError(
                f"the projected Fisher plus regularization ({self.width} x {self.width}) is "
                f"not positive definite (regularization={self.regularization}; {n} fit samples "
                "span at most that many of its dimensions). Pass a regularization > 0, e.g. "
                f"1e-3 times its mean diagonal ({float(fisher.diagonal().mean()):.3g})."
            )
        self._fisher_chol = chol

    # ------------------------------------------------------------------ factors
    def _project_records(self, records: list[LayerRecord]) -> torch.Tensor:
        """Projected per-sample gradients of one captured batch, ``(n, width)``."""
        out = self._working_gradients(records, "projected gradients")
        assert out is not None
        return out

    def _projected_factors(self, x: Any, y: Any, precondition: bool) -> torch.Tensor:
        self._require_fitted()

        def fill(records: list[LayerRecord], block: torch.Tensor) -> None:
            phi = self._project_records(records)
            block[:] = self._precondition(phi) if precondition else phi

        return self._per_batch(x, y, self.width, "projected factors", fill)

    def _precondition(self, phi: torch.Tensor) -> torch.Tensor:
        if self.preconditioner == "identity":
            return phi
        if self.preconditioner == "fisher":
            assert self._fisher_chol is not None
            solved = torch.cholesky_solve(phi.T.to(torch.float64), self._fisher_chol)
            return solved.T.to(phi.dtype)
        out, offset = torch.empty_like(phi), 0
        for c, (k_out, k_in) in zip(self.curvature, self.projection_shapes, strict=True):
            m = phi[:, offset : offset + k_out * k_in].reshape(-1, k_out, k_in)
            out[:, offset : offset + k_out * k_in] = c.solve(m, self.lam).flatten(1)
            offset += k_out * k_in
        return out

    def test_factors(self, x: Any, y: Any) -> torch.Tensor:
        """Preconditioned projected gradients of the batch ``(x, y)``, ``(n, width)``."""
        return self._projected_factors(x, y, precondition=True)

    def train_factors(self, x: Any, y: Any) -> torch.Tensor:
        """Projected per-sample gradients of the batch ``(x, y)``, ``(n, width)``.

        Rows of fit samples come from :attr:`fit_rows` where the fit kept them; only the other
        samples are passed through the model.
        """
        rows = self.fit_rows
        if rows is None or not rows.active:
            return self._projected_factors(x, y, precondition=False)
        self._require_fitted()
        xt, yt = self._prepare(x, y)
        check_budget(  # as for rows computed here
            xt.shape[0] * self.width * self._itemsize,
            self.budget,
            f"projected factors of {xt.shape[0]} samples ({xt.shape[0]} x {self.width})",
            "pass fewer samples per call (a smaller block), or raise memory_budget.",
        )
        found, kept = rows.take(sample_keys(xt, yt))
        if kept is None:
            return self._projected_factors(xt, yt, precondition=False)
        if len(found) == xt.shape[0]:
            return kept
        out = self._empty(xt.shape[0], self.width, "projected factors")
        hit = torch.zeros(xt.shape[0], dtype=torch.bool)
        hit[found] = True
        out[hit.to(out.device)] = kept
        miss = (~hit).nonzero().squeeze(1).to(xt.device)
        out[~hit.to(out.device)] = self._projected_factors(
            xt.index_select(0, miss), yt.index_select(0, miss), precondition=False
        )
        return out
