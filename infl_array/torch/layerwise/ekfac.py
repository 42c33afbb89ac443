"""EK-FAC influence: eigenvalue-corrected Kronecker-factored curvature, layer by layer.

Influence is taken with respect to the parameters of the layers
:func:`~infl_array.torch.layerwise.coverage.find_layers` covers (``nn.Linear``, ``nn.Conv2d``,
``nn.Embedding``, ``transformers``' ``Conv1D``, ``nn.MultiheadAttention``'s projections,
normalisation layers; :mod:`~infl_array.torch.layerwise.capture`); other trainable parameters
are left out, listed in ``excluded_parameters``, and ``fit`` warns about them. Each layer's
block of the Hessian of the mean training loss is approximated by its (E)K-FAC curvature
(:mod:`~infl_array.torch.layerwise.kronecker`); blocks of different layers are taken as zero,
so the influence is the sum over layers of ``grad_l(test)^T (H_l + lambda*Id)^-1 grad_l(train)``.

Factors (the engine's interface)
--------------------------------
* ``test_factors(x, y)``: ``(n, test_factor_width)``, the preconditioned per-sample
  gradients ``(H_l + lambda*Id)^-1 grad_l`` of every layer, each a ``(d_out, width_in)``
  matrix flattened row-major (``test_factor_width`` = the included parameters). For a
  *compact* layer (below) the matrix is kept in the layer's Kronecker eigenbasis,
  ``(Q_G^T grad_l Q_A) / (Lambda + lambda)``: rotating it back would cost
  ``d_out * width_in * (d_out + width_in)`` per sample, the dominant cost of wide Linear layers.
* ``train_factors(x, y)``: ``(n, train_factor_width)``, the most compact exact form of each
  layer's per-sample gradient: for a compact layer, one that saw one position per sample at
  ``fit`` (a Linear layer on flat features), its output gradient and its input (with a 1 for
  the bias) rotated into the eigenbasis, ``Q_G^T g`` then ``Q_A^T (a, 1)``
  (``d_out + width_in`` numbers: the rotated gradient is their outer product); otherwise
  (convolutions, Linear layers on sequences) the gradient matrix itself, flattened; for an
  embedding whose ``T`` tokens per sample take fewer numbers than its gradient matrix
  (``T * (width + 1) < width * vocab``), the sparse form: the ``T`` token ids, then the ``T``
  output gradients (``(T, width)``, flattened), since the gradient is ``sum_t g_t e_{id_t}^T``
  (a sample touches only its tokens' rows; shorter samples are padded with zero gradients).
* Layout: layers in the order of ``layers`` in both factor sets.
* Embeddings: the input factor of one-hot token rows is diagonal, so its eigenbasis is the
  identity and no ``vocab x vocab`` matrix is formed; an embedding's factors are its
  ``(width, vocab)`` gradient matrix, dense (for sparse per-sample embedding gradients use
  :class:`~infl_array.torch.layerwise.projected.ProjectedInfluence`, whose input projection of
  a token is a column gather).
* ``factor_product(test_f, train_f)``: the ``(n_test, n_train)`` block; ``factor_diagonal``:
  the row-wise pairs (self-influence). ``influences`` is ``factor_product`` of both factors.

Conventions, compared with pyDVL 0.10 and Kronfluence 1.0.1
-----------------------------------------------------------
* **Same as pyDVL** on layers that see one position per sample: ``A = mean_i a a^T`` (with
  the bias's 1 appended), ``G = mean_i g g^T``, K-FAC eigenvalues ``s_G s_A``, EK-FAC
  eigenvalues ``mean_i (Q_G^T g a^T Q_A)**2``, ``regularization`` added to every eigenvalue.
  With ``fisher_type="auto"`` and the cross-entropy loss, ``g`` are pyDVL's label-free
  pseudo-gradients, so values agree with pyDVL's ``EkfacInfluence`` on Linear-only models.
* **Damping**: an absolute ``regularization`` (pyDVL's ``hessian_regularization``).
  Kronfluence's heuristic damping is relative, ``0.1 * mean(Lambda)`` per layer:
  ``relative_regularization=True`` with ``regularization=0.1`` is that rule.
* **Curvature gradients**: Kronfluence samples labels from the model's predictive
  distribution (an MC estimate of the true Fisher), or uses the true labels with
  ``use_empirical_fisher=True`` (our ``fisher_type="empirical"``); our default for
  cross entropy is pyDVL's deterministic pseudo-gradient (``fisher_type="pydvl"``).
* **Mean vs sum over positions**: our ``A`` and ``G`` sum over the positions of a sample and
  average over samples (pyDVL); Kronfluence averages over all positions. The eigenvectors are
  the same. K-FAC eigenvalues (``update_diagonal=False``) are ``s_G s_A / T`` with ``T`` the
  positions per sample (KFC's scaling, Grosse & Martens 2016); Kronfluence's are ``s_G s_A``
  of its position-averaged factors (``T**2`` times smaller than ours), pyDVL's ``s_G s_A``
  of its sums (``T`` times larger). Equal when ``T = 1``.
* **Per-position handling** of the eigenvalue correction: squares of per-sample gradients
  (summed over positions), as Kronfluence; pyDVL squares per-position gradients.
* **Convolutions**: unfolded patches as Kronfluence; grouped convolutions are refused
  (Kronfluence averages patches over groups); pyDVL supports Linear layers only.
* **Scores**: in pyDVL's "up" convention (positive = helpful), per-sample gradients of the
  per-sample loss; Kronfluence's pairwise scores have the same sign and scale.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from infl_array.torch.full.functional import LossFn, nonnegative
from infl_array.torch.layerwise.base import DEFAULT_MEMORY_BUDGET, LayerwiseInfluence
from infl_array.torch.layerwise.capture import LayerRecord, keep_mask
from infl_array.torch.layerwise.ekfac_products import EkfacProductsMixin, _NormalizedTest
from infl_array.torch.layerwise.kronecker import KroneckerCurvature
from infl_array.torch.layerwise.subnormal import flush_subnormals

__all__ = ["EkfacInfluence"]


class EkfacInfluence(EkfacProductsMixin, LayerwiseInfluence):
    """Influence with (E)K-FAC curvature per layer (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (in eval mode if it has dropout or batch normalisation).
    loss : callable
        ``loss(outputs, targets)`` reducing by mean; default cross entropy.
    regularization : float
        ``lambda >= 0`` added to every eigenvalue (to the diagonal of each layer's curvature).
    update_diagonal : bool
        Refit the eigenvalues in the Kronecker eigenbasis (EK-FAC; a second pass over the fit
        data). ``False``: K-FAC's products of factor eigenvalues.
    hessian_regularization : float, optional
        pyDVL's name for ``regularization`` (give one or the other).
    progress : bool
        Show progress bars over the fit passes (pyDVL's argument).
    fisher_type : {"auto", "empirical", "pydvl"}
        Gradients the curvature is estimated from
        (see :mod:`~infl_array.torch.layerwise.base`).
    batch_size : int or None
        Samples per forward/backward pass.
    memory_budget : int
        Bytes that fitted factors, per-sample temporaries and returned factors may take;
        :class:`~infl_array.torch.layerwise.capture.MemoryBudgetError` names what does not fit.
    strict_coverage : bool
        Raise instead of warning when trainable parameters are left out
        (:class:`~infl_array.torch.layerwise.coverage.PartialCoverageWarning`).
    relative_regularization : bool
        Damp each layer by ``regularization`` times its mean eigenvalue (Kronfluence's
        heuristic at 0.1; see :class:`~infl_array.torch.layerwise.base.LayerwiseInfluence`).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(),
    ...                             torch.nn.Linear(5, 3)).double()
    >>> infl = EkfacInfluence(model, regularization=0.01, update_diagonal=True).fit((x, y))
    >>> infl.test_factor_width, infl.train_factor_width   # 25 + 18; (5 + 5) + (3 + 6)
    (43, 19)
    >>> infl.influences(x[:2], y[:2], x, y).shape
    torch.Size([2, 30])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn = F.cross_entropy,
        regularization: float = 0.0,
        update_diagonal: bool = False,
        *,
        hessian_regularization: float | None = None,
        progress: bool = False,
        fisher_type: str = "auto",
        batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        strict_coverage: bool = False,
        relative_regularization: bool = False,
    ) -> None:
        if hessian_regularization is not None:
            hessian_regularization = nonnegative(hessian_regularization, "hessian_regularization")
            if regularization not in (0.0, hessian_regularization):
                raise ValueError(
                    f"regularization={regularization!r} and hessian_regularization="
                    f"{hessian_regularization!r} disagree; pass one of them (they are the same "
                    "setting: hessian_regularization is pyDVL's name)."
                )
            regularization = hessian_regularization
        if not isinstance(update_diagonal, bool):
            raise TypeError(f"update_diagonal must be a bool, got {update_diagonal!r}.")
        super().__init__(
            model,
            loss,
            regularization,
            fisher_type=fisher_type,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=progress,
            strict_coverage=strict_coverage,
            relative_regularization=relative_regularization,
        )
        self.update_diagonal = update_diagonal
        self.curvature: list[KroneckerCurvature] = []
        self._compact: list[bool] = []
        self._token_positions: list[int] = []  # sparse embedding layers: tokens per sample
        self._normalized = _NormalizedTest()

    @property
    def hessian_regularization(self) -> float:
        """pyDVL's name for :attr:`regularization`."""
        return self.lam

    def _settings(self) -> dict[str, Any]:
        return {"update_diagonal": self.update_diagonal, **super()._settings()}

    def _curvature(self) -> str:
        kind = "EK-FAC (eigenvalue-corrected)" if self.update_diagonal else "K-FAC"
        return f"per layer, {kind} Kronecker factors"

    @flush_subnormals
    def _fit_layers(self) -> None:
        self._normalized.clear()
        self.curvature = self._fit_kronecker(correct=self.update_diagonal)
        self._compact = [
            c.max_positions == 1
            and spec.width_in + spec.d_out < spec.n_params
            and spec.kind != "embedding"  # its sparse rows are smaller still
            for c, spec in zip(self.curvature, self.layers, strict=True)
        ]
        self._token_positions = [
            c.max_positions
            if spec.kind == "embedding"
            and not compact
            and c.max_positions * (spec.d_out + 1) < spec.n_params
            else 0
            for c, spec, compact in zip(self.curvature, self.layers, self._compact, strict=True)
        ]

    def _working(self, i: int, rec: LayerRecord, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """As the base's, but an embedding's inputs are its token ids (``-1``: no gradient),
        never one-hot rows (:class:`~infl_array.torch.layerwise.kronecker.KroneckerCurvature`
        takes them as they are)."""
        if self.layers[i].kind == "embedding":
            return rec.token_ids(rows), rec.output_grads(rows)
        return super()._working(i, rec, rows)

    # ------------------------------------------------------------------ layout
    def _train_width(self, i: int) -> int:
        spec = self.layers[i]
        if self._token_positions[i]:
            return self._token_positions[i] * (1 + spec.d_out)
        return spec.d_out + spec.width_in if self._compact[i] else spec.n_params

    @property
    def test_factor_width(self) -> int:
        """Columns of :meth:`test_factors`: the number of included parameters."""
        self._require_fitted()
        return sum(spec.n_params for spec in self.layers)

    @property
    def train_factor_width(self) -> int:
        """Columns of :meth:`train_factors` (compact layers take ``d_out + width_in``)."""
        self._require_fitted()
        return sum(self._train_width(i) for i in range(len(self.layers)))

    # ------------------------------------------------------------------ factors
    @flush_subnormals
    def test_factors(self, x: Any, y: Any) -> torch.Tensor:
        """``(H_l + lambda*Id)^-1 grad_l l(z)`` of every layer, ``(n, test_factor_width)``.

        Compact layers' columns are in their eigenbasis (see the module docstring).

        ``x``, ``y``: a batch of test inputs and targets (tensors or numpy arrays). The rows
        are on the model's device, in its dtype.
        """
        self._require_fitted()

        def fill(records: list[LayerRecord], block: torch.Tensor) -> None:
            offset = 0
            for i, rec in enumerate(records):
                width = rec.spec.n_params
                curv = self.curvature[i]
                for rows in self._row_chunks(i, rec):
                    rotated = curv.rotate(*self._working(i, rec, rows))
                    lam = self.layer_regularization[i]
                    if self._compact[i]:
                        solved = curv.precondition_rotated(rotated, lam)
                    else:
                        solved = curv.solve_rotated(rotated, lam)
                    block[rows, offset : offset + width] = solved.flatten(1)
                offset += width

        return self._per_batch(x, y, self.test_factor_width, "EK-FAC test factors", fill)

    @flush_subnormals
    def train_factors(self, x: Any, y: Any) -> torch.Tensor:
        """Per-sample gradients in compact form, ``(n, train_factor_width)``.

        ``x``, ``y``: a batch of training inputs and targets. Per layer: ``(g, a)`` for a
        compact layer, token ids and output gradients for a sparse embedding, else the
        flattened gradient matrix. Raises ``ValueError`` if a compact
        layer sees more than one position per sample here.
        """
        self._require_fitted()

        def fill(records: list[LayerRecord], block: torch.Tensor) -> None:
            offset = 0
            for i, rec in enumerate(records):
                spec = rec.spec
                if self._compact[i]:
                    self._check_one_position(rec)
                    curv = self.curvature[i]
                    assert curv.q_g is not None
                    acts, grads = self._working(i, rec, slice(None))
                    block[:, offset : offset + spec.d_out] = grads[:, 0] @ curv.q_g
                    end = offset + spec.d_out + spec.width_in
                    block[:, offset + spec.d_out : end] = curv.rotate_in(acts[:, 0])
                elif self._token_positions[i]:
                    width = self._train_width(i)
                    block[:, offset : offset + width] = self._token_rows(i, rec)
                else:
                    for rows in self._row_chunks(i, rec, (spec.d_out, spec.width_in)):
                        m = rec.per_sample_grads(rows).flatten(1)
                        block[rows, offset : offset + spec.n_params] = m
                offset += self._train_width(i)

        return self._per_batch(x, y, self.train_factor_width, "EK-FAC train factors", fill)

    def _token_rows(self, i: int, rec: LayerRecord) -> torch.Tensor:
        """An embedding's sparse train rows: token ids ``(n, T)``, then output gradients
        ``(n, T * width)`` (zero where the token gets no gradient), ``T`` the fit's positions."""
        positions, width = self._token_positions[i], self.layers[i].d_out
        if rec.positions > positions:
            raise ValueError(
                f"embedding {rec.spec.name!r} saw {positions} tokens per sample at fit, so its "
                f"train factors hold {positions}, but it sees {rec.positions} here; pass "
                "sequences no longer than the fit data's, or refit on such data."
            )
        ids = torch.cat([c.x.reshape(c.x.shape[0], -1) for c in rec.calls], dim=1)
        grads = rec.output_grads() * keep_mask(rec.spec.module, ids)[..., None]
        out = grads.new_zeros((rec.n, positions * (1 + width)))
        out[:, : ids.shape[1]] = ids.to(out.dtype)
        out[:, positions : positions + grads[0].numel()] = grads.flatten(1)
        return out

    @staticmethod
    def _check_one_position(rec: LayerRecord) -> None:
        if rec.positions != 1:
            raise ValueError(
                f"layer {rec.spec.name!r} saw one position per sample at fit, so its train "
                f"factors store one (output gradient, input) pair, but it sees "
                f"{rec.positions} positions per sample here; pass data of the shape the model "
                "was fitted on, or refit on such data."
            )

    def influences(self, x_test: Any, y_test: Any, x_train: Any, y_train: Any) -> torch.Tensor:
        """Influence matrix ``(n_test, n_train)``: :meth:`factor_product` of both factors.

        Positive entries mean the training point helps (lowers) the test loss.
        """
        return self.factor_product(
            self.test_factors(x_test, y_test), self.train_factors(x_train, y_train)
        )
