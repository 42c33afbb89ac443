"""Shared machinery of the torch influence backends.

Every backend computes, in pyDVL's "up" convention,

    ``I[i, j] = sum_b g_b(z_test_i)^T (C_bb + lambda_b*Id)^-1 g_b(z_train_j)``

where the parameters are grouped into ordered blocks ``b``
(:mod:`~infl_array.torch.full.param_blocks`; one block with every trainable parameter by default),
``g_b`` is the loss gradient restricted to block ``b`` and ``C`` is the curvature over the data
given to ``fit`` at the model's parameters: the Hessian of the MEAN training loss
(``SecondOrderMode.HESSIAN``, the default) or pyDVL's Gauss-Newton matrix ``1/N sum_i g_i g_i^T``
(``SecondOrderMode.GAUSS_NEWTON``). :class:`TorchInfluenceBase` holds what is common:

* ``fit`` is cheap: it refuses a model in training mode
  (:func:`~infl_array.torch.full.checks.require_eval_mode`), normalises the data
  (:func:`~infl_array.torch.data.views.as_indexed`), checks its first samples through the model and
  the loss (:meth:`TorchInfluenceBase.check_data`), snapshots the parameters
  (:class:`~infl_array.torch.full.functional.FlatModel`), resolves the blocks, fingerprints model
  and data (all that ``influence_config`` and ``model_fingerprint`` need), then calls the subclass
  hook ``_fit`` (cheap work only, e.g. random draws);
* the expensive part (the subclass hook ``_build``: Hessian and its factorisation, eigenpairs,
  sketch products, preconditioners) runs once, thread-safely, on the first call that needs it
  (``test_factors``, ``influences``, low-rank ``train_factors``, fitted attributes), or at once
  with ``prepare()`` or ``fit(data, lazy=False)``
  (:class:`~infl_array.torch.full.deferred.DeferredBuild`): a store whose blocks are all computed
  is read with a freshly fitted model without paying for it. Warnings and errors of that part (an
  indefinite curvature, a singular system) surface there, not at ``fit``. A backend is pickled
  as it stands (a source sent to workers prepares it first: :mod:`~infl_array.torch.source.source`);
* passes over the fit data weight each batch's mean quantity by ``n_batch / n``, so ragged
  batches give exactly the curvature of the mean over all points. Backends offering
  ``hessian_average="batch"`` can instead weight every batch of the fit DataLoader equally,
  as pyDVL's ``HessianOperator`` does; ``curvature_matmat`` multiplies the block-diagonal
  curvature with a block of vectors in ONE data pass, each column in one block (these passes
  live in :mod:`~infl_array.torch.full.curvature`);
* ``test_factors`` computes per-sample gradients (the selected parameters, in block order) and
  applies the subclass' ``_solve``; ``train_factors`` applies ``_project`` (the identity except
  for low-rank methods);
* ``influence_config`` and ``model_fingerprint`` identify backend, settings, loss, fit data and
  parameters for caching.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from infl_array.engine.budget import Budget
from infl_array.torch.data.options import loss_name, optional_positive_int, positive_int
from infl_array.torch.data.tokens import split_mapping
from infl_array.torch.data.views import IndexedData, as_indexed
from infl_array.torch.full.checks import check_sample, model_inputs, require_eval_mode
from infl_array.torch.full.curvature import CurvatureMixin
from infl_array.torch.full.deferred import DeferredBuild, held_tensor_bytes
from infl_array.torch.full.diagnostics import Diagnostics
from infl_array.torch.full.functional import (
    FlatModel,
    LossFn,
    check_finite,
    model_fingerprint,
    parameter_fingerprints,
)
from infl_array.torch.full.gradients import DEFAULT_BATCH_SIZE, GradientsMixin
from infl_array.torch.full.identity import IdentityMixin
from infl_array.torch.full.param_blocks import (
    BlockMode,
    BlockStructure,
    ParameterBlocks,
    SecondOrderMode,
    block_regularization,
    parse_block_structure,
    parse_second_order_mode,
    resolve_blocks,
)

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MEMORY_BUDGET", "TorchInfluenceBase"]

DEFAULT_MEMORY_BUDGET = 4 << 30
"""Default memory budget of the backends, in bytes (4 GiB)."""

BUILT = "the built curvature state"
SNAPSHOT = "the fitted parameters' snapshot"
"""What a backend's built state (Hessian factors, eigenpairs, sketches) is held as."""

SOLVE_FIX = "raise memory_budget, or pass fewer test samples per call (a smaller block_shape)."

_B = TypeVar("_B", bound="TorchInfluenceBase")


class TorchInfluenceBase(GradientsMixin, CurvatureMixin, IdentityMixin, DeferredBuild):
    """Base class of the torch backends (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model. Its trainable parameters are snapshotted at ``fit``.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean, e.g. ``torch.nn.functional.cross_entropy``.
    regularization : float, None or dict
        ``lambda >= 0`` added to the curvature's diagonal; ``None`` means 0; a dict
        ``{block name: value or None}`` (keys a subset of the block names) sets it per block.
    batch_size : int or None
        Samples per vectorised pass over data (memory control; does not change results up to
        rounding). ``None``: the larger of 1024 and the fit DataLoader's batch size, and for
        per-sample gradients as many samples as 32 MiB of gradients hold if that is more
        (small passes cost mostly fixed overhead; lower it if a pass runs out of memory).
    block_structure : BlockMode or mapping
        Parameter blocks of the block-diagonal curvature (see
        :mod:`~infl_array.torch.full.param_blocks`).
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    positive_regularization : bool
        Require ``lambda_b > 0`` for every block (subclasses that divide by it).
    memory_budget : int
        Bytes the backend's built state, its working space and the arrays made from it may hold
        together (:attr:`budget`): test factors are solved in chunks of samples that fit.

    Notes
    -----
    Models in training mode are refused: :meth:`fit` (and :meth:`check_data`, and every
    gradient pass) raises :class:`ValueError` naming the dropout and normalisation modules in
    training mode; call ``model.eval()`` first (the model is never switched silently, it is
    the caller's). :meth:`fit` is lazy (see the module docstring): :attr:`is_fitted` is True
    after it, :attr:`is_prepared` once the expensive part has run.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: Any = None,
        batch_size: int | None = None,
        *,
        block_structure: BlockStructure = BlockMode.FULL,
        second_order_mode: SecondOrderMode = SecondOrderMode.HESSIAN,
        positive_regularization: bool = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}; wrap your "
                "function in an nn.Module."
            )
        if not callable(loss):
            raise TypeError(
                f"loss must be callable as loss(outputs, targets), got {type(loss).__name__}; "
                "pass e.g. torch.nn.functional.cross_entropy."
            )
        self.model = model
        self.loss = loss
        self.budget = Budget(positive_int(memory_budget, "memory_budget"))
        """What the backend (and arrays made from it) hold (:mod:`infl_array.engine.budget`)."""
        self.block_structure = parse_block_structure(block_structure)
        self.second_order_mode = parse_second_order_mode(second_order_mode)
        self._blocks: ParameterBlocks = resolve_blocks(model, self.block_structure)
        self._positive_reg = positive_regularization
        self.regularization, self._block_reg = block_regularization(
            regularization, self._blocks.names, positive=positive_regularization
        )
        self.batch_size = optional_positive_int(batch_size, "batch_size")
        self._hessian_average = "sample"
        self._flat: FlatModel | None = None
        self._fit_data: IndexedData | None = None
        self._fit_fingerprint: str | None = None
        self._model_fingerprint: str | None = None
        self._parameter_fingerprints: dict[str, str] | None = None
        self._diagnostics = Diagnostics()
        self.reset_build()

    # ------------------------------------------------------------------ fitting
    def fit(self: _B, train_data: object, *, lazy: bool = True) -> _B:
        """Fit to the training data the model was trained on.

        Cheap by default: the data are checked and fingerprinted and the parameters
        snapshotted; the curvature work runs on first use (see :meth:`prepare`).

        Parameters
        ----------
        train_data : tuple, Dataset or DataLoader
            Any form accepted by :func:`~infl_array.torch.data.views.as_indexed`.
        lazy : bool
            ``False`` runs the expensive part now (:meth:`prepare`), so that its warnings and
            errors surface here.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For a model in training mode, or data the model or loss cannot take (see
            :meth:`check_data`).
        """
        data = as_indexed(train_data, "train_data")
        require_eval_mode(self.model, type(self).__name__)
        first = data.take(range(min(2, len(data))))  # sets the keys of mapping samples
        flat = FlatModel(self.model, self.loss, data.input_keys)
        self.budget.release_all(SNAPSHOT)  # a refit replaces the snapshot
        self._check_sample(flat, *first, "train")
        blocks = resolve_blocks(self.model, self.block_structure)
        with self._build_lock:
            self._flat, self._blocks, self._fit_data = flat, blocks, data
            self._fit_fingerprint = data.fingerprint()
            self._model_fingerprint = model_fingerprint(self.model)
            self._parameter_fingerprints = parameter_fingerprints(self.model)
            self.reset_build()
            self._diagnostics.clear()
            try:
                self._fit()  # its own refusals first: they name the backend's fix
                nbytes = flat.theta.numel() * flat.theta.element_size()
                self.budget.reserve(nbytes, SNAPSHOT, "raise memory_budget.", lasting=True)
            except BaseException:
                self._flat = self._fit_data = None
                self._fit_fingerprint = self._model_fingerprint = None
                self._parameter_fingerprints = None
                raise
        if not lazy:
            self.prepare()
        return self

    def _check_buildable(self) -> None:
        self._require_fit()
        require_eval_mode(self.model, type(self).__name__)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self._flat is not None

    def _fitted_state(self, name: str, unfitted: Any) -> Any:
        """Attribute ``name`` of the built state (prepared first); ``unfitted`` before fit."""
        if not self.is_fitted:
            return unfitted
        self.prepare()
        return getattr(self, name)

    def diagnostics(self) -> dict[str, str]:
        """What the solves found so far: JSON-able ``{key: message}``, empty when all is well.

        Keys are ``"not_positive_definite"`` and ``"not_converged"`` (see
        :mod:`~infl_array.torch.full.diagnostics`); each message says what was found, with numbers,
        and the fix. Cumulative since the last :meth:`fit`; asking never computes anything
        (before the curvature work has run it is empty).
        """
        return self._diagnostics.as_dict()

    def check_data(self, x: Any, y: Any, what: str = "train") -> None:
        """Check that ``(x, y)`` suit the model and the loss, on their first samples.

        Cheap: the first two samples go through the model and the loss (without gradients),
        the first one through a per-sample gradient; nothing else is computed or stored.

        Parameters
        ----------
        x, y : torch.Tensor or numpy.ndarray
            Inputs and targets (or a leading slice of them), same first dimension.
        what : str
            The data's name in messages (``"train"``, ``"test"``).

        Raises
        ------
        ValueError
            For a model in training mode, x the model cannot take (e.g. "the model's first
            layer expects 13 features per sample; test has 12"), targets the loss cannot take
            (the message names the conversion that works, e.g. ``y.squeeze(-1)``), a loss that
            does not reduce by mean, or a gradient that fails under ``torch.func.vmap``.
        TypeError
            For x or y that are not tensors or arrays, or x of a dtype the model cannot take.
        """
        require_eval_mode(self.model, type(self).__name__)
        flat = self._flat
        if flat is None:
            keys = split_mapping(x, None, what)[2] if isinstance(x, Mapping) else None
            flat = FlatModel(self.model, self.loss, keys)
        self._check_sample(flat, x, y, what)

    def _check_sample(self, flat: FlatModel, x: Any, y: Any, what: str) -> None:
        xs, ys = model_inputs(flat, x, y, limit=2)
        if xs.shape[0] == 0:
            raise ValueError(f"{what} data is empty; influence needs at least one sample.")
        who, gradient = type(self).__name__, self._gradient_check(flat)
        check_sample(flat, loss_name(self.loss), xs, ys, what, who, gradient)

    def _gradient_check(
        self, flat: FlatModel
    ) -> Callable[[torch.Tensor, torch.Tensor], object] | None:
        """How :meth:`check_data` takes one sample's gradient (None: ``vmap`` per-sample)."""
        return None

    @property
    def n_params(self) -> int:
        """Number of parameter entries the influence is taken over (all blocks)."""
        return self._blocks.size

    holds_built_state: bool = True
    """Whether :meth:`prepare` holds what it built in the budget (subclasses that hold their
    fitted state themselves say False)."""

    solve_vectors: int = 2
    """Parameter-sized vectors a solve holds per test sample (beside its gradient and its
    factors); test factors are solved in chunks of samples whose vectors fit the budget."""

    @property
    def memory_budget(self) -> int:
        """The memory budget in bytes (:attr:`budget`'s total; settable)."""
        return self.budget.total

    @memory_budget.setter
    def memory_budget(self, value: int) -> None:
        self.budget.total = positive_int(value, "memory_budget")

    @property
    def _itemsize(self) -> int:
        return self._require_fit().theta.element_size()

    def prepare(self: _B) -> _B:
        """Run the expensive part of the fit now, unless it has run (see
        :class:`~infl_array.torch.full.deferred.DeferredBuild`); what it built is held in the
        memory budget for as long as it lives."""
        built = self._built
        need = 0 if built or not self.is_fitted else self._build_bytes()
        if need:
            with self.budget.hold(need, f"{type(self).__name__}'s {self._build_what()}", SOLVE_FIX):
                super().prepare()
        else:
            super().prepare()
        if not built and self._built and self.holds_built_state:
            self.budget.release_all(BUILT)
            try:
                self.budget.reserve(held_tensor_bytes(self), BUILT, SOLVE_FIX, lasting=True)
            except MemoryError:
                self.reset_build()  # refused again by the next call, not used half-held
                raise
        return self

    @property
    def block_names(self) -> list[str]:
        """Names of the parameter blocks, in order (``[""]`` for ``BlockMode.FULL``)."""
        return list(self._blocks.names)

    def _fit(self) -> None:
        """Subclass hook run at the end of :meth:`fit` (cheap work only)."""

    solve_passes: bool = False
    """Whether a solve makes curvature passes (iterative solvers): test factors are then solved
    in chunks that leave room for a pass of one column per sample."""

    def _solve_pass_bytes(self) -> int:
        """Room a solve leaves per sample for its curvature passes (0 without passes): the
        pass's products and their sum, and one sample's working space (:meth:`curvature_matmat`
        holds them itself while it runs)."""
        if not self.solve_passes:
            return 0
        return 2 * self.n_params * self._itemsize + self._matmat_sample_bytes(1)

    def _build_bytes(self) -> int:
        """Hook: bytes the build holds at its peak, reserved in the budget while it runs
        (0: the build reserves what it holds itself)."""
        return 0

    def _build_what(self) -> str:
        """Hook: what the build makes, in a refusal's words."""
        return "build"

    def _require_fit(self) -> FlatModel:
        if self._flat is None or self._fit_data is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call .fit(train_data) first with the "
                "data the model was trained on."
            )
        return self._flat

    # ------------------------------------------------------------------ protocol
    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        """Map ``(n, n_params)`` gradients to test factors ``(n, k)``."""
        raise NotImplementedError

    def _project(self, grads: torch.Tensor) -> torch.Tensor:
        """Map ``(n, n_params)`` gradients to train factors ``(n, k)`` (identity here)."""
        return grads

    def test_factors(self, x: Any, y: Any) -> torch.Tensor:
        """``(C + lambda*Id)^-1 grad l(z)`` (block by block) for each test sample, ``(n, k)``.

        Parameters
        ----------
        x, y : torch.Tensor or numpy.ndarray
            A batch of test inputs and targets.

        Returns
        -------
        torch.Tensor
            One row per sample, on the model's device, in the model's dtype.
        """
        self.prepare()
        xt, yt = self._prepare(x, y)
        n = xt.shape[0]
        if n == 0:
            return self._project(self.per_sample_grads(xt, yt))
        # a row's gradient, its solve's working vectors and its factors; counted with room
        # for the curvature passes the solve makes (they hold their own working space)
        per_row = self._itemsize * self.n_params * (2 + self.solve_vectors)
        what = f"{type(self).__name__}'s solve"
        step = self.budget.count(per_row + self._solve_pass_bytes(), n, what, SOLVE_FIX)
        parts = []
        for s in range(0, n, step):
            rows = slice(s, min(s + step, n))
            with self.budget.hold(per_row * (rows.stop - rows.start), f"{what} of {n} samples"):
                parts.append(self._solve(self.per_sample_grads(xt[rows], yt[rows])))
        return check_finite(parts[0] if len(parts) == 1 else torch.cat(parts), "test factors")

    def train_factors(self, x: Any, y: Any) -> torch.Tensor:
        """``grad l(z)`` (projected for low-rank backends) for each sample, shape ``(n, k)``.

        Parameters
        ----------
        x, y : torch.Tensor or numpy.ndarray
            A batch of training inputs and targets.

        Returns
        -------
        torch.Tensor
            One row per sample, on the model's device, in the model's dtype.
        """
        xt, yt = self._prepare(x, y)
        nbytes = 2 * self._itemsize * self.n_params * xt.shape[0]  # the passes and their rows
        with self.budget.hold(nbytes, f"{type(self).__name__}'s train gradients", SOLVE_FIX):
            return self._project(self.per_sample_grads(xt, yt))

    def influences(self, x_test: Any, y_test: Any, x_train: Any, y_train: Any) -> torch.Tensor:
        """Influence matrix ``test_factors(test) @ train_factors(train).T``, ``(n_test, n_train)``.

        Positive entries mean the training point helps (lowers) the test loss.
        """
        return self.test_factors(x_test, y_test) @ self.train_factors(x_train, y_train).T
