"""Shared machinery of the torch influence backends.

Every backend computes, in pyDVL's "up" convention,

    ``I[i, j] = grad l(z_test_i)^T (H + lambda*Id)^-1 grad l(z_train_j)``

where ``H`` is the Hessian of the MEAN training loss over all data given to ``fit`` at the
model's parameters. :class:`TorchInfluenceBase` holds what is common:

* ``fit`` normalises the data (:func:`~infl_array.torch.data.as_indexed`), snapshots the
  parameters (:class:`~infl_array.torch._functional.FlatModel`), fingerprints model and data,
  then calls the subclass hook ``_fit``;
* passes over the fit data weight each batch's mean-loss quantity by ``n_batch / n`` so ragged
  batches give exactly the Hessian of the mean over all points;
* ``test_factors`` computes per-sample gradients and applies the subclass' ``_solve``;
  ``train_factors`` applies ``_project`` (the identity except for low-rank methods);
* ``influence_config`` and ``model_fingerprint`` identify backend, settings, loss, fit data and
  parameters for caching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ._functional import FlatModel, LossFn, check_finite, model_fingerprint, nonnegative
from .data import IndexedData, as_indexed, numpy_to_tensor

__all__ = ["DEFAULT_BATCH_SIZE", "ConvergenceWarning", "TorchInfluenceBase"]

DEFAULT_BATCH_SIZE = 1024
"""Samples per pass when neither ``batch_size`` nor the fit DataLoader gives one."""


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
    regularization : float
        ``lambda >= 0`` added to the Hessian's diagonal.
    batch_size : int or None
        Samples per vectorised pass over data (memory control; does not change results up to
        rounding). ``None``: the larger of 1024 and the fit DataLoader's batch size (small
        passes cost mostly fixed overhead; lower it if a pass runs out of memory).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = 0.0,
        batch_size: int | None = None,
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
        self.regularization = nonnegative(regularization, "regularization")
        self.batch_size = optional_positive_int(batch_size, "batch_size")
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
        """Number of trainable parameters (after :meth:`fit`)."""
        return self._require_fit().n_params

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
        """Yield ``(x, y, n_batch / n)`` for all fit data, on the model's device."""
        self._require_fit()
        assert self._fit_data is not None
        n = len(self._fit_data)
        for xb, yb in self._fit_data.batches(self._pass_size()):
            x, y = self._prepare(xb, yb)
            yield x, y, x.shape[0] / n

    def _mean_over_fit(
        self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Sum over fit batches of ``fn(x_b, y_b) * n_b / n`` (exact mean over all points)."""
        total: torch.Tensor | None = None
        for x, y, w in self._fit_batches():
            part = fn(x, y) * w
            total = part if total is None else total + part
        assert total is not None  # fit data is never empty
        return total

    def hessian(self) -> torch.Tensor:
        """Explicit Hessian of the mean fit loss, ``(n_params, n_params)`` (no regularization)."""
        flat = self._require_fit()
        return check_finite(self._mean_over_fit(flat.batch_hessian), "the Hessian")

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v`` for ``v`` of shape ``(n_params, m)``, all columns in one data pass."""
        flat = self._require_fit()
        return self._mean_over_fit(lambda x, y: flat.batch_hvp(v, x, y))

    def reg_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``(H + lambda*Id) @ v`` for ``v`` of shape ``(n_params, m)``."""
        return self.hvp(v) + self.regularization * v

    def per_sample_grads(self, x: Any, y: Any) -> torch.Tensor:
        """Per-sample loss gradients, ``(n, n_params)``, on the model's device."""
        flat = self._require_fit()
        xt, yt = self._prepare(x, y)
        n = xt.shape[0]
        if n == 0:
            return torch.zeros((0, flat.n_params), dtype=flat.dtype, device=flat.device)
        size = self._pass_size()
        parts = [
            flat.per_sample_grads(xt[s : s + size], yt[s : s + size]) for s in range(0, n, size)
        ]
        return check_finite(torch.cat(parts), "per-sample gradients")

    # ------------------------------------------------------------------ protocol
    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        """Map ``(n, n_params)`` gradients to test factors ``(n, k)``."""
        raise NotImplementedError

    def _project(self, grads: torch.Tensor) -> torch.Tensor:
        """Map ``(n, n_params)`` gradients to train factors ``(n, k)`` (identity here)."""
        return grads

    def test_factors(self, x: Any, y: Any) -> torch.Tensor:
        """``(H + lambda*Id)^-1 grad l(z)`` for each test sample, shape ``(n, k)``.

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
            ``{"backend", "regularization", <settings>, "loss", "fit_data"}``; ``fit_data`` is
            the fit data's fingerprint, or ``None`` before :meth:`fit`.
        """
        return {
            "backend": type(self).__name__,
            "regularization": self.regularization,
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
