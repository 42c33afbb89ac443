"""Shared machinery of the torch influence backends.

Every backend computes, in pyDVL's "up" convention,

    ``I[i, j] = sum_b g_b(z_test_i)^T (C_bb + lambda_b*Id)^-1 g_b(z_train_j)``

where the parameters are grouped into ordered blocks ``b`` (:mod:`~infl_array.torch.blocks`;
one block with every trainable parameter by default), ``g_b`` is the loss gradient restricted to
block ``b`` and ``C`` is the curvature over the data given to ``fit`` at the model's parameters:
the Hessian of the MEAN training loss (``SecondOrderMode.HESSIAN``, the default) or pyDVL's
Gauss-Newton matrix ``1/N sum_i g_i g_i^T`` (``SecondOrderMode.GAUSS_NEWTON``).
:class:`TorchInfluenceBase` holds what is common:

* ``fit`` normalises the data (:func:`~infl_array.torch.data.as_indexed`), snapshots the
  parameters (:class:`~infl_array.torch._functional.FlatModel`), resolves the blocks,
  fingerprints model and data, then calls the subclass hook ``_fit``;
* passes over the fit data weight each batch's mean quantity by ``n_batch / n``, so ragged
  batches give exactly the curvature of the mean over all points. Backends offering
  ``hessian_average="batch"`` can instead weight every batch of the fit DataLoader equally,
  which is what pyDVL's ``HessianOperator`` (used by its CG, Arnoldi and Nystroem models) does;
* :meth:`TorchInfluenceBase.curvature_matmat` multiplies the block-diagonal curvature with a
  block of vectors in ONE data pass, each column living in one block (a vector of block ``b`` is
  placed in the full parameter space, multiplied, and read back on block ``b``'s rows);
* ``test_factors`` computes per-sample gradients (the selected parameters, in block order) and
  applies the subclass' ``_solve``; ``train_factors`` applies ``_project`` (the identity except
  for low-rank methods);
* ``influence_config`` and ``model_fingerprint`` identify backend, settings, loss, fit data and
  parameters for caching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ._functional import FlatModel, LossFn, check_finite, model_fingerprint
from .blocks import (
    BlockMode,
    BlockStructure,
    ParameterBlocks,
    SecondOrderMode,
    block_regularization,
    block_structure_config,
    parse_block_structure,
    parse_second_order_mode,
    resolve_blocks,
)
from .data import IndexedData, as_indexed, numpy_to_tensor

__all__ = ["DEFAULT_BATCH_SIZE", "ConvergenceWarning", "TorchInfluenceBase"]

DEFAULT_BATCH_SIZE = 1024
"""Samples per pass when neither ``batch_size`` nor the fit DataLoader gives one."""

HESSIAN_AVERAGES = ("sample", "batch")

_B = TypeVar("_B", bound="TorchInfluenceBase")


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before meeting its tolerance."""


def positive_int(value: object, name: str) -> int:
    """Validate a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def optional_positive_int(value: object, name: str) -> int | None:
    """Validate a positive integer or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)


def optional_seed(value: object) -> int | None:
    """Validate a seed: an integer, or ``None`` for torch's global generator."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(
            f"seed must be an integer or None (torch's global generator), got {value!r}."
        )
    return value


def parse_hessian_average(value: object) -> str:
    """Validate ``hessian_average``: ``"sample"`` or ``"batch"``."""
    if value not in HESSIAN_AVERAGES:
        raise ValueError(
            f"hessian_average must be 'sample' (the mean loss over all points) or 'batch' "
            f"(pyDVL's equal weighting of the fit DataLoader's batches), got {value!r}."
        )
    return str(value)


def _loss_name(loss: object) -> str:
    qual = getattr(loss, "__qualname__", None)
    if qual is None:
        qual = type(loss).__qualname__
        module = type(loss).__module__
    else:
        module = getattr(loss, "__module__", None) or type(loss).__module__
    return f"{module}.{qual}"


class TorchInfluenceBase:
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
        rounding). ``None``: the larger of 1024 and the fit DataLoader's batch size (small
        passes cost mostly fixed overhead; lower it if a pass runs out of memory).
    block_structure : BlockMode or mapping
        Parameter blocks of the block-diagonal curvature (see :mod:`~infl_array.torch.blocks`).
    second_order_mode : SecondOrderMode
        ``HESSIAN`` or ``GAUSS_NEWTON``.
    positive_regularization : bool
        Require ``lambda_b > 0`` for every block (subclasses that divide by it).
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

    # ------------------------------------------------------------------ fitting
    def fit(self: _B, train_data: object) -> _B:
        """Fit to the training data the model was trained on.

        Parameters
        ----------
        train_data : tuple, Dataset or DataLoader
            Any form accepted by :func:`~infl_array.torch.data.as_indexed`.

        Returns
        -------
        self
        """
        data = as_indexed(train_data, "train_data")
        self._flat = FlatModel(self.model, self.loss)
        self._blocks = resolve_blocks(self.model, self.block_structure)
        self._fit_data = data
        self._fit_fingerprint = data.fingerprint()
        self._model_fingerprint = model_fingerprint(self.model)
        self._fit()
        return self

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self._flat is not None

    @property
    def n_params(self) -> int:
        """Number of parameter entries the influence is taken over (all blocks)."""
        return self._blocks.size

    @property
    def block_names(self) -> list[str]:
        """Names of the parameter blocks, in order (``[""]`` for ``BlockMode.FULL``)."""
        return list(self._blocks.names)

    def _fit(self) -> None:
        """Subclass hook run at the end of :meth:`fit`."""

    def _require_fit(self) -> FlatModel:
        if self._flat is None or self._fit_data is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call .fit(train_data) first with the "
                "data the model was trained on."
            )
        return self._flat

    def _pass_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        if self._fit_data is not None and self._fit_data.batch_size is not None:
            return max(self._fit_data.batch_size, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE

    # ------------------------------------------------------------------ data handling
    def _prepare(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert ``x``, ``y`` to tensors on the model's device; floats to the model dtype."""
        flat = self._require_fit()
        out = []
        for name, a in (("x", x), ("y", y)):
            t = numpy_to_tensor(a) if isinstance(a, np.ndarray) else a
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch tensor or numpy array, got {type(a).__name__}."
                )
            dtype = flat.dtype if t.is_floating_point() else t.dtype
            out.append(t.to(device=flat.device, dtype=dtype))
        if out[0].ndim == 0 or out[1].ndim == 0 or out[0].shape[0] != out[1].shape[0]:
            raise ValueError(
                f"x and y need the same leading sample dimension, got shapes "
                f"{tuple(out[0].shape)} and {tuple(out[1].shape)}."
            )
        return out[0], out[1]

    def _fit_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """Yield ``(x, y, weight)`` for all fit data, on the model's device.

        ``weight`` is ``n_batch / n`` (mean over samples) or, with ``hessian_average="batch"``,
        ``1 / n_batches`` over the fit DataLoader's own batches.
        """
        self._require_fit()
        assert self._fit_data is not None
        n = len(self._fit_data)
        if self._hessian_average == "batch":
            size = self._fit_data.batch_size or n
            n_batches = -(-n // size)
            for xb, yb in self._fit_data.batches(size):
                x, y = self._prepare(xb, yb)
                yield x, y, 1.0 / n_batches
            return
        for xb, yb in self._fit_data.batches(self._pass_size()):
            x, y = self._prepare(xb, yb)
            yield x, y, x.shape[0] / n

    def _mean_over_fit(
        self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Sum over fit batches of ``fn(x_b, y_b) * weight_b`` (see :meth:`_fit_batches`)."""
        total: torch.Tensor | None = None
        for x, y, w in self._fit_batches():
            part = fn(x, y) * w
            total = part if total is None else total + part
        assert total is not None  # fit data is never empty
        return total

    # ------------------------------------------------------------------ curvature
    def _batch_matmat(self, e: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Curvature of one batch (its mean loss) times ``e`` (full flat parameter space)."""
        flat = self._require_fit()
        if self.second_order_mode is SecondOrderMode.HESSIAN:
            return flat.batch_hvp(e, x, y)
        g = flat.per_sample_grads(x, y)
        return g.T @ (g @ e) / x.shape[0]

    def curvature_matmat(self, v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
        """Block-diagonal curvature times ``v``, all columns in one pass over the fit data.

        Parameters
        ----------
        v : torch.Tensor
            ``(n_params, m)`` in the selected (block-ordered) parameter space; column ``j`` must
            be zero outside block ``col_block[j]``.
        col_block : torch.Tensor
            ``(m,)`` block number of each column.

        Returns
        -------
        torch.Tensor
            ``(n_params, m)``: column ``j`` is ``C_bb v_j`` on block ``b = col_block[j]``'s rows
            and zero elsewhere.
        """
        blocks = self._blocks
        flat = self._require_fit()
        if blocks.is_identity:
            return self._mean_over_fit(lambda x, y: self._batch_matmat(v, x, y))
        index = blocks.index.to(flat.device)
        e = torch.zeros((flat.n_params, v.shape[1]), dtype=v.dtype, device=v.device)
        e.index_add_(0, index, v)
        out = self._mean_over_fit(lambda x, y: self._batch_matmat(e, x, y))[index]
        if len(blocks.sizes) > 1:
            out = out * (blocks.row_block(v.device)[:, None] == col_block[None, :])
        return out

    def block_matmat(self, block: int, v: torch.Tensor) -> torch.Tensor:
        """``C_bb @ v`` for ``v`` of shape ``(size of block b, m)`` (one data pass)."""
        sl = self._blocks.slices[block]
        if self._blocks.is_identity:
            return self.curvature_matmat(v, torch.zeros(v.shape[1], dtype=torch.long))
        full = torch.zeros((self.n_params, v.shape[1]), dtype=v.dtype, device=v.device)
        full[sl] = v
        cols = torch.full((v.shape[1],), block, dtype=torch.long, device=v.device)
        return self.curvature_matmat(full, cols)[sl]

    def curvature_blocks(self) -> list[torch.Tensor]:
        """Explicit diagonal blocks ``C_bb`` of the curvature (no regularization), in order."""
        flat = self._require_fit()
        blocks = self._blocks
        if self.second_order_mode is SecondOrderMode.GAUSS_NEWTON:

            def batch_gn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                g = self._select(flat.per_sample_grads(x, y))
                return self._gn_blocks(g) / x.shape[0]

            full = self._mean_over_fit(batch_gn)
        elif blocks.is_identity:
            full = self._mean_over_fit(flat.batch_hessian)
        else:
            eye = torch.eye(blocks.size, dtype=flat.dtype, device=flat.device)
            full = self.curvature_matmat(eye, blocks.row_block(flat.device))
            full = (full + full.T) / 2
        check_finite(full, "the curvature matrix")
        return [full[sl, sl] for sl in blocks.slices]

    def _gn_blocks(self, g: torch.Tensor) -> torch.Tensor:
        """Block-diagonal part of ``g^T g`` (zero off the diagonal blocks), selected space."""
        out = torch.zeros((g.shape[1], g.shape[1]), dtype=g.dtype, device=g.device)
        for sl in self._blocks.slices:
            out[sl, sl] = g[:, sl].T @ g[:, sl]
        return out

    def hessian(self) -> torch.Tensor:
        """Explicit Hessian of the mean fit loss over the selected parameters (no blocks, no
        regularization), ``(n_params, n_params)``."""
        flat = self._require_fit()
        h = check_finite(self._mean_over_fit(flat.batch_hessian), "the Hessian")
        if self._blocks.is_identity:
            return h
        index = self._blocks.index.to(flat.device)
        return h[index][:, index]

    def _select(self, grads: torch.Tensor) -> torch.Tensor:
        """Gradients over all trainable parameters -> the selected ones, in block order."""
        if self._blocks.is_identity:
            return grads
        return grads[:, self._blocks.index.to(grads.device)]

    def per_sample_grads(self, x: Any, y: Any) -> torch.Tensor:
        """Per-sample loss gradients over the selected parameters in block order,
        ``(n, n_params)``, on the model's device."""
        flat = self._require_fit()
        xt, yt = self._prepare(x, y)
        n = xt.shape[0]
        if n == 0:
            return torch.zeros((0, self.n_params), dtype=flat.dtype, device=flat.device)
        size = self._pass_size()
        parts = [
            flat.per_sample_grads(xt[s : s + size], yt[s : s + size]) for s in range(0, n, size)
        ]
        return check_finite(self._select(torch.cat(parts)), "per-sample gradients")

    def _split_columns(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, n_params)`` gradients -> one column per (block, sample), zero off its block.

        Returns ``(columns, col_block)`` with columns ``(n_params, n_blocks * n)`` ordered block
        by block; :meth:`_merge_columns` undoes it.
        """
        blocks = self._blocks
        n = grads.shape[0]
        if len(blocks.sizes) == 1:
            return grads.T.clone(), torch.zeros(n, dtype=torch.long, device=grads.device)
        cols = torch.zeros(
            (blocks.size, n * len(blocks.sizes)), dtype=grads.dtype, device=grads.device
        )
        for b, sl in enumerate(blocks.slices):
            cols[sl, b * n : (b + 1) * n] = grads[:, sl].T
        col_block = torch.arange(len(blocks.sizes), device=grads.device).repeat_interleave(n)
        return cols, col_block

    def _merge_columns(self, cols: torch.Tensor, n: int) -> torch.Tensor:
        """Inverse of :meth:`_split_columns`: ``(n, n_params)`` rows."""
        n_blocks = len(self._blocks.sizes)
        return cols.reshape(cols.shape[0], n_blocks, n).sum(1).T

    def _column_regularization(self, col_block: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``lambda`` of each column's block, ``(m,)``."""
        reg = torch.tensor(self._block_reg, dtype=dtype, device=col_block.device)
        return reg[col_block]

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
        grads = self.per_sample_grads(x, y)
        if grads.shape[0] == 0:
            return self._project(grads)
        return check_finite(self._solve(grads), "test factors")

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
        return self._project(self.per_sample_grads(x, y))

    def influences(self, x_test: Any, y_test: Any, x_train: Any, y_train: Any) -> torch.Tensor:
        """Influence matrix ``test_factors(test) @ train_factors(train).T``, ``(n_test, n_train)``.

        Positive entries mean the training point helps (lowers) the test loss.
        """
        return self.test_factors(x_test, y_test) @ self.train_factors(x_train, y_train).T

    def _settings(self) -> dict[str, Any]:
        """Backend-specific settings that change results (for :meth:`influence_config`)."""
        return {}

    def influence_config(self) -> dict[str, Any]:
        """JSON-able identification of backend, settings, loss and fit data.

        Returns
        -------
        dict
            ``{"backend", "regularization", "block_structure", "second_order_mode",
            <settings>, "loss", "fit_data"}``; ``fit_data`` is the fit data's fingerprint, or
            ``None`` before :meth:`fit`.
        """
        return {
            "backend": type(self).__name__,
            "regularization": self.regularization,
            "block_structure": block_structure_config(self.block_structure),
            "second_order_mode": self.second_order_mode.value,
            **self._settings(),
            "loss": _loss_name(self.loss),
            "fit_data": self._fit_fingerprint,
        }

    def model_fingerprint(self) -> str:
        """sha256 hex digest of the parameters influence is computed at.

        The parameters as of :meth:`fit` once fitted, the model's current ones before.
        """
        if self._model_fingerprint is not None:
            return self._model_fingerprint
        return model_fingerprint(self.model)
