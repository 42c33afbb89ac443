"""What the per-layer backends share: layers, capture passes, curvature fitting, budgets.

:class:`LayerwiseInfluence` is the base of :class:`~infl_array.torch.layerwise.ekfac.EkfacInfluence`
and :class:`~infl_array.torch.layerwise.projected.ProjectedInfluence`. Both work layer by layer on
the layers :func:`~infl_array.torch.layerwise.capture.find_layers` finds, in a per-layer *working
space*: the layer's ``(d_out, width_in)`` gradient matrix itself (EK-FAC) or its projection to
``(k_out, k_in)`` (projected). A subclass says how a captured layer maps into its working
space (:meth:`LayerwiseInfluence._working`); the base

* evaluates the model at the parameters snapshotted by ``fit``
  (:class:`~infl_array.torch.full.functional.FlatModel`), so later changes to the module do not
  mix with fitted factors;
* runs the capture passes over the fit data (one forward and backward pass per batch) with the
  loss objective or the curvature objective (``fisher_type``);
* fits one :class:`~infl_array.torch.layerwise.kronecker.KroneckerCurvature` per layer (K-FAC
  factors, eigenbasis, optionally the EK-FAC eigenvalue correction in a second pass);
* accounts what it holds in one :class:`~infl_array.engine.budget.Budget` of ``memory_budget``
  bytes (:attr:`LayerwiseInfluence.budget`, shared with the arrays made from the backend): the
  fitted curvature for as long as it lives, and, while a call runs, the captured batch, the
  per-sample temporaries (batches split into chunks of samples that fit what is left) and the
  factors being returned; it refuses
  (:class:`~infl_array.errors.MemoryBudgetError`) what cannot fit.

``fisher_type`` chooses the gradients the curvature is estimated from: ``"empirical"``, the
gradients of the training loss with the true targets; ``"pydvl"``, pyDVL 0.10's label-free
pseudo-gradients of softmax outputs (:func:`~infl_array.torch.layerwise.capture.pydvl_objective`);
``"auto"`` (default), ``"pydvl"`` when the loss is ``torch.nn.functional.cross_entropy`` or an
``nn.CrossEntropyLoss`` (so that values agree with pyDVL's ``EkfacInfluence``), else
``"empirical"``.

Coverage: the layers are those :func:`~infl_array.torch.layerwise.coverage.find_layers`
finds; ``fit`` warns with
:class:`~infl_array.torch.layerwise.coverage.PartialCoverageWarning` when trainable
parameters are left out (``strict_coverage=True`` raises instead), and
:attr:`LayerwiseInfluence.covered_parameters` names the covered ones.

Precision: a float16 or bfloat16 model runs its forward and backward passes in its dtype;
everything the backends compute from them (curvature factors, eigendecompositions, solves,
projections, factors and their products) is float32 (:attr:`LayerwiseInfluence.work_dtype`).

Data check: ``fit`` and ``check_data`` run the first samples through the model and the loss
and then through one capture pass (what the backend itself does), not through a
``torch.func.vmap`` per-sample gradient: models the capture handles (``.item()``,
data-dependent branches) are accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from infl_array.torch.data.tokens import HALF, call_model, causal_lm_loss, model_outputs
from infl_array.torch.full.base import TorchInfluenceBase
from infl_array.torch.full.functional import FlatModel, LossFn, check_finite
from infl_array.torch.layerwise.capture import (
    LayerRecord,
    Objective,
    capture,
    check_deterministic,
    check_mean_reduction,
    loss_objective,
    pydvl_objective,
)
from infl_array.torch.layerwise.coverage import (
    Coverage,
    coverage_report,
    find_layers,
    warn_or_raise,
)
from infl_array.torch.layerwise.working import WorkingSpaceMixin

__all__ = ["DEFAULT_MEMORY_BUDGET", "FISHER_TYPES", "LayerwiseInfluence"]

DEFAULT_MEMORY_BUDGET = 4 << 30
"""Default memory budget of the per-layer backends, in bytes (4 GiB)."""

CAPTURE_OVERHEAD = 3
"""A captured batch takes about this many times its records' bytes while it is captured (the
forward pass's saved activations, the recorded inputs and the output gradients)."""

OUTPUT_FIX = "pass fewer samples per call (a smaller block), or raise memory_budget."

UNUSED_SETTINGS = ("block_structure", "second_order_mode")
"""Settings of the full-parameter backends the per-layer backends do not use."""

FISHER_TYPES = ("auto", "empirical", "pydvl")
"""Accepted values of ``fisher_type``."""


def resolve_fisher_type(fisher_type: object, loss: object) -> str:
    """``"empirical"`` or ``"pydvl"`` for a ``fisher_type`` argument (see the module docstring)."""
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}.")
    if fisher_type == "pydvl" and loss is causal_lm_loss:
        raise ValueError(
            "fisher_type='pydvl' takes the softmax over dim 1, the class axis of "
            "cross_entropy's (n, C, ...) scores, but causal_lm_loss scores (n, T, vocab) logits "
            "with the vocabulary last; pass fisher_type='empirical' (or 'auto', which picks it)."
        )
    if fisher_type != "auto":
        return str(fisher_type)
    is_ce = loss is F.cross_entropy or isinstance(loss, nn.CrossEntropyLoss)
    return "pydvl" if is_ce else "empirical"


class LayerwiseInfluence(WorkingSpaceMixin, TorchInfluenceBase):
    """Base class of the per-layer backends (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model; the layers
        :func:`~infl_array.torch.layerwise.coverage.find_layers` covers are used.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean over the batch.
    regularization : float
        ``lambda >= 0`` added to the curvature's diagonal.
    fisher_type : {"auto", "empirical", "pydvl"}
        Gradients the curvature is estimated from.
    batch_size : int or None
        Samples per forward/backward pass.
    memory_budget : int
        Bytes that fitted state, per-sample temporaries and returned factors may take together
        (:attr:`budget`); arrays made from the backend draw from the same budget.
    progress : bool
        Show a progress bar over the fit passes.
    strict_coverage : bool
        Raise a ``ValueError`` at ``fit`` instead of warning when trainable parameters are
        left out.
    relative_regularization : bool
        Take ``regularization`` relative to each layer's curvature: layer ``l`` is damped by
        ``regularization * mean(Lambda_l)``, its mean curvature eigenvalue (Kronfluence's
        heuristic damping is this rule at 0.1, dattri's block-projected IF's at 1e-5), instead
        of by ``regularization`` itself. Layers whose curvatures differ by orders of magnitude
        (a language model's) are then damped alike.

    Attributes
    ----------
    layers : list of LayerSpec
        The layers influence is computed with respect to.
    excluded_parameters : list of str
        Trainable parameters left out (not in any covered layer).
    covered_parameters : list of str
        Names of the covered parameters (a tied weight once).
    budget : Budget
        The memory budget's account: what the backend (and arrays made from it) hold.
    """

    strict_coverage: bool = False
    holds_built_state = False  # the fitted state is held as it is fitted

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = 0.0,
        *,
        fisher_type: str = "auto",
        batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        progress: bool = False,
        strict_coverage: bool = False,
        relative_regularization: bool = False,
    ) -> None:
        if isinstance(loss, bool):
            raise TypeError(
                f"the second argument of {type(self).__name__} is the loss, got {loss!r}; "
                "pyDVL's positional update_diagonal is a keyword here "
                "(EkfacInfluence(model, update_diagonal=True))."
            )
        if isinstance(regularization, Mapping):
            raise TypeError(
                f"{type(self).__name__} takes one float regularization for all layers, got "
                f"{regularization!r}; per-block values are for the full-parameter backends."
            )
        super().__init__(model, loss, regularization, batch_size, memory_budget=memory_budget)
        self.lam = float(self._block_reg[0]) if self._block_reg else 0.0
        """The regularization as a float (per-layer backends take one value)."""
        self.layers, self.excluded_parameters = find_layers(model)
        self.fisher_type = resolve_fisher_type(fisher_type, loss)
        self._capture_bytes = 0  # per sample, measured at fit
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {progress!r}.")
        self.progress = progress
        if not isinstance(strict_coverage, bool):
            raise TypeError(f"strict_coverage must be a bool, got {strict_coverage!r}.")
        self.strict_coverage = strict_coverage
        if not isinstance(relative_regularization, bool):
            raise TypeError(
                f"relative_regularization must be a bool, got {relative_regularization!r}."
            )
        self.relative_regularization = relative_regularization
        self.layer_regularization: list[float] = []
        """Each layer's damping after ``fit`` (``regularization``, or relative to the layer's
        mean eigenvalue with ``relative_regularization``)."""
        self.coverage: Coverage = coverage_report(model, self.layers, self.excluded_parameters)
        """Which trainable parameters are covered (names, fraction)."""
        self._params: dict[str, torch.Tensor] | None = None
        self._fitted = False

    # ------------------------------------------------------------------ state
    @property
    def pass_size(self) -> int:
        """Samples per capture pass: the base's, fewer when a captured batch of that many
        would take more than a quarter of the budget left beside the fitted state."""
        size = super().pass_size
        if self._capture_bytes <= 0:
            return size
        spare = self.budget.total - self.budget.lasting_bytes()
        return max(1, min(size, spare // (4 * self._capture_bytes)))

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has completed."""
        return self._fitted and self._flat is not None

    @property
    def covered_parameters(self) -> list[str]:
        """Names of the parameters influence is taken with respect to (``named_parameters``
        names; a tied weight once)."""
        return list(self.coverage.covered)

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype of curvature, solves and factors: the model's, float32 for half models."""
        dtype = self._require_fit().dtype
        return torch.float32 if dtype in HALF else dtype

    def _fit(self) -> None:
        self._fitted = False
        warn_or_raise(self.coverage, type(self).__name__, self.strict_coverage)
        self._params = self._parameters()
        assert self._fit_data is not None
        x, y = self._prepare(*self._fit_data.take(range(min(2, len(self._fit_data)))))
        with torch.no_grad():
            check_deterministic(self.model)
            check_mean_reduction(self.loss, self._forward(x), y)
        self._capture_bytes = 0
        records = self._records(x, y)
        self._capture_bytes = CAPTURE_OVERHEAD * -(-sum(r.nbytes for r in records) // x.shape[0])
        del records
        self._fit_layers()
        self._fitted = True

    def _gradient_check(self, flat: FlatModel) -> Callable[[torch.Tensor, torch.Tensor], object]:
        """The data check's gradient: one capture pass, as the backend takes gradients."""

        def one_pass(x: torch.Tensor, y: torch.Tensor) -> object:
            theta = flat.theta.detach().requires_grad_(True)
            params = {**flat.unflatten(theta), **flat.const}
            objective = loss_objective(self.loss, y)
            return capture(self.model, self.layers, x, objective, params, call=self._caller(flat))

        return one_pass

    def _parameters(self) -> dict[str, torch.Tensor]:
        """The snapshotted parameters, those of the layers as views of one leaf needing grad."""
        flat = self._require_fit()
        theta = flat.theta.detach().requires_grad_(True)
        return {**flat.unflatten(theta), **flat.const}

    # -- pickling (fill workers): the views of the leaf are rebuilt, not sent ------------------
    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_params": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._flat is not None and self._fitted:
            self._params = self._parameters()

    def _fit_layers(self) -> None:
        """Subclass hook: fit what the backend needs from the fit data."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "fisher_type": self.fisher_type,
            "layers": [spec.name for spec in self.layers],
        }
        if self.relative_regularization:  # absent otherwise: stores made before keep matching
            settings["relative_regularization"] = True
        return settings

    def _damping(self, mean_eigenvalue: float) -> float:
        """The damping of a layer whose mean curvature eigenvalue is ``mean_eigenvalue``."""
        return self.lam * mean_eigenvalue if self.relative_regularization else self.lam

    def _curvature(self) -> str:
        """The curvature as ``info`` names it."""
        raise NotImplementedError

    def influence_config(self) -> dict[str, Any]:
        """The base's config without the full-parameter settings these backends do not use
        (``block_structure``, ``second_order_mode``; stores that recorded them still open:
        :func:`~infl_array.arrays.staleness.same_settings`)."""
        cfg = super().influence_config()
        for unused in UNUSED_SETTINGS:
            cfg.pop(unused, None)
        return cfg

    def description(self) -> dict[str, Any]:
        """The config and the curvature these backends use."""
        return {**self.influence_config(), "curvature": self._curvature()}

    @property
    def _itemsize(self) -> int:
        return torch.empty((), dtype=self.work_dtype).element_size()

    # ------------------------------------------------------------------ passes
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self._params is not None
        keys = self._require_fit().input_keys
        return model_outputs(call_model(self.model, self._params, x, keys))

    def _objective(self, kind: str, y: torch.Tensor) -> Objective:
        if kind == "curvature" and self.fisher_type == "pydvl":
            return pydvl_objective
        return loss_objective(self.loss, y)

    def _records(self, x: torch.Tensor, y: torch.Tensor, kind: str = "loss") -> list[LayerRecord]:
        """Capture the layers on one batch (``kind``: ``"loss"`` or ``"curvature"``)."""
        check_deterministic(self.model)
        objective = self._objective(kind, y)
        flat = self._require_fit()
        keys = flat.input_keys or ()
        mask = x[..., keys.index("attention_mask")] != 0 if "attention_mask" in keys else None
        return capture(
            self.model,
            self.layers,
            x,
            objective,
            self._params,
            self.work_dtype,
            call=self._caller(flat),
            mask=mask,
        )

    @staticmethod
    def _caller(flat: FlatModel) -> Callable[[nn.Module, Any, Any], Any]:
        """How capture calls the model: with the unpacked inputs of mapping samples."""

        def call(model: nn.Module, x: Any, params: Any) -> Any:
            return call_model(model, params, x, flat.input_keys)

        return call

    def _fit_records(
        self, kind: str, desc: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[LayerRecord]]]:
        """Every fit batch ``(x, y)`` (on the model's device) with its records, in order."""
        assert self._fit_data is not None
        n_batches = -(-len(self._fit_data) // self.pass_size)
        for x, y, _ in tqdm(self._fit_batches(), desc, n_batches, disable=not self.progress):
            with self._capturing(x.shape[0]):
                yield x, y, self._records(x, y, kind)

    def _capturing(self, n: int) -> Any:
        """Hold the bytes a captured batch of ``n`` samples takes (a context manager)."""
        return self.budget.hold(
            n * self._capture_bytes,
            f"a captured batch of {n} samples",
            "pass a smaller batch_size, or raise memory_budget.",
        )

    # ------------------------------------------------------------------ helpers
    def _output_label(self, n: int, width: int, what: str) -> str:
        dtype = str(self.work_dtype).replace("torch.", "")
        return f"{what} of {n} samples ({n} x {width} {dtype})"

    def _empty(self, n: int, width: int, what: str) -> torch.Tensor:
        """An uninitialised ``(n, width)`` output, refused when the budget has not that much
        left (the caches give bytes back first)."""
        flat = self._require_fit()
        nbytes = n * width * self._itemsize
        with self.budget.hold(nbytes, self._output_label(n, width, what), OUTPUT_FIX):
            pass  # room made: the caller holds it (see _holding_output)
        return torch.empty((n, width), dtype=self.work_dtype, device=flat.device)

    def _holding_output(self, n: int, width: int, what: str) -> Any:
        """Hold an ``(n, width)`` output's bytes while it is filled (a context manager)."""
        nbytes = n * width * self._itemsize
        return self.budget.hold(nbytes, self._output_label(n, width, what), OUTPUT_FIX)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call .fit(train_data) first with the data "
                "the model was trained on."
            )

    def _per_batch(
        self,
        x: Any,
        y: Any,
        width: int,
        what: str,
        fill: Callable[[list[LayerRecord], torch.Tensor], None],
    ) -> torch.Tensor:
        """``(n, width)`` rows of ``(x, y)``: ``fill(records, rows_out)`` per captured batch."""
        xt, yt = self._prepare(x, y)
        n = xt.shape[0]
        with self._holding_output(n, width, what):
            out = torch.empty((n, width), dtype=self.work_dtype, device=self._require_fit().device)
            size = self.pass_size
            for start in range(0, n, size):
                batch = slice(start, min(start + size, n))
                with self._capturing(batch.stop - batch.start):
                    fill(self._records(xt[batch], yt[batch]), out[batch])
        return check_finite(out, what)

    def layer_gradients(self, x: Any, y: Any) -> torch.Tensor:
        """Per-sample loss gradients of the included layers, ``(n, n_layer_params)``.

        Each layer's block is its ``(d_out, width_in)`` gradient flattened row-major (weight
        columns, then the bias column), layers in the order of :attr:`layers`. For tests and
        inspection: this is the ``n x n_params`` form the backends avoid.
        """
        self._require_fit()

        def fill(records: list[LayerRecord], block: torch.Tensor) -> None:
            offset = 0
            for i, rec in enumerate(records):
                spec = rec.spec
                for rows in self._row_chunks(i, rec, (spec.d_out, spec.width_in)):
                    grads = rec.per_sample_grads(rows).flatten(1)
                    block[rows, offset : offset + spec.n_params] = grads
                offset += spec.n_params

        width = sum(spec.n_params for spec in self.layers)
        return self._per_batch(x, y, width, "layer gradients", fill)
