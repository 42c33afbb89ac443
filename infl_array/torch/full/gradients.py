"""Per-sample gradients of the torch backends, in vectorised passes.

:class:`GradientsMixin` holds the part of :class:`~infl_array.torch.full.base.TorchInfluenceBase`
that turns samples into per-sample loss gradients over the selected parameters: inputs moved to
the model's device and dtype, passes of :attr:`~GradientsMixin.pass_size` samples under
``torch.func.vmap`` (:class:`~infl_array.torch.full.functional.FlatModel`), the selected
parameters taken in block order, and each column's regularization. Its methods are those of the
base class (they read its fitted state); the split keeps each class to one job.

Memory: a pass over data holds its working space in the backend's memory budget
(:meth:`GradientsMixin._pass_rows`): the samples of a pass are as many as fit what the budget
has left (at most :attr:`~GradientsMixin.pass_size`), at a cost per sample counted in units of
the bytes one sample's autograd graph saves
(:meth:`~infl_array.torch.full.functional.FlatModel.measure_graph`). A per-sample gradient pass
costs two graphs and the sample's gradient (measured peaks: about 2.3 graphs at 1e5
parameters); the curvature passes are in :mod:`~infl_array.torch.full.curvature`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from infl_array.engine.budget import Budget
from infl_array.torch.data.views import IndexedData
from infl_array.torch.full.checks import model_inputs, require_eval_mode
from infl_array.torch.full.functional import FlatModel, check_finite
from infl_array.torch.full.param_blocks import ParameterBlocks

__all__ = ["DEFAULT_BATCH_SIZE", "GRADIENT_PASS_BYTES", "GradientsMixin"]

DEFAULT_BATCH_SIZE = 1024
"""Samples per pass when neither ``batch_size`` nor the fit DataLoader gives one."""

GRADIENT_PASS_BYTES = 32 << 20
"""Per-sample gradients one pass may return (32 MiB) when no ``batch_size`` is given."""

PASS_FIX = "raise memory_budget, or pass a smaller batch_size (samples per pass)."
"""The fix a pass over data names when not even one sample's working space fits."""


class _Fitted(Protocol):
    """What the mixin's methods use of the base class (its settings and fitted state)."""

    model: nn.Module
    batch_size: int | None
    budget: Budget
    _blocks: ParameterBlocks
    _block_reg: list[float]
    _fit_data: IndexedData | None

    @property
    def n_params(self) -> int: ...

    @property
    def pass_size(self) -> int: ...

    @property
    def gradient_pass_size(self) -> int: ...

    def _require_fit(self) -> FlatModel: ...

    def _check_sample(self, flat: FlatModel, x: Any, y: Any, what: str) -> None: ...

    def _prepare(self: _Fitted, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _select(self: _Fitted, grads: torch.Tensor) -> torch.Tensor: ...

    def _pass_rows(self, per_sample: int, what: str, most: int | None = None) -> int: ...

    def _graph_bytes(self) -> int: ...


class GradientsMixin:
    """Per-sample gradients of the torch backends (see the module docstring)."""

    @property
    def pass_size(self: _Fitted) -> int:
        """Samples per vectorised pass: ``batch_size``, else the larger of the fit
        DataLoader's batch size and :data:`DEFAULT_BATCH_SIZE`."""
        if self.batch_size is not None:
            return self.batch_size
        if self._fit_data is not None and self._fit_data.batch_size is not None:
            return max(self._fit_data.batch_size, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE

    @property
    def gradient_pass_size(self: _Fitted) -> int:
        """Samples per vectorised pass of per-sample gradients: ``batch_size`` when given,
        else :attr:`pass_size` raised to fill :data:`GRADIENT_PASS_BYTES` of gradients (a
        small model's gradients are computed in few large passes: each pass has a fixed cost)."""
        if self.batch_size is not None:
            return self.batch_size
        row = self.n_params * self._require_fit().dtype.itemsize
        return max(self.pass_size, GRADIENT_PASS_BYTES // max(1, row))

    def _graph_bytes(self: _Fitted) -> int:
        """Bytes one fit sample's autograd graph saves (measured once per fit)."""
        flat = self._require_fit()
        if flat.graph_bytes is None:
            assert self._fit_data is not None
            flat.measure_graph(*self._prepare(*self._fit_data.take(range(1))))
        assert flat.graph_bytes is not None
        return flat.graph_bytes

    def _pass_rows(self: _Fitted, per_sample: int, what: str, most: int | None = None) -> int:
        """Samples per pass whose working space (``per_sample`` bytes each) fits what the
        budget has left, at most ``most`` (default :attr:`pass_size`); refused (naming
        ``what``) when not one does."""
        return self.budget.count(per_sample, most or self.pass_size, what, PASS_FIX)

    def _prepare(self: _Fitted, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``, ``y`` as tensors on the model's device (floats in the model dtype, integer
        targets as int64; :func:`~infl_array.torch.full.checks.model_inputs`)."""
        return model_inputs(self._require_fit(), x, y)

    def _select(self: _Fitted, grads: torch.Tensor) -> torch.Tensor:
        """Gradients over all trainable parameters -> the selected ones, in block order."""
        if self._blocks.is_identity:
            return grads
        return grads[:, self._blocks.index.to(grads.device)]

    def per_sample_grads(self: _Fitted, x: Any, y: Any) -> torch.Tensor:
        """Per-sample loss gradients over the selected parameters in block order,
        ``(n, n_params)``, on the model's device."""
        flat = self._require_fit()
        require_eval_mode(self.model, type(self).__name__)
        xt, yt = self._prepare(x, y)
        n = xt.shape[0]
        if n == 0:
            return torch.zeros((0, self.n_params), dtype=flat.dtype, device=flat.device)
        # two graphs and the gradient of each sample (the rows' concatenation is the caller's)
        per_sample = 2 * self._graph_bytes() + flat.n_params * flat.theta.element_size()
        what = f"{type(self).__name__}'s per-sample gradient pass"
        size = self._pass_rows(per_sample, what, self.gradient_pass_size)
        parts = []
        try:
            for s in range(0, n, size):
                rows = slice(s, min(s + size, n))
                with self.budget.hold(per_sample * (rows.stop - rows.start), what, PASS_FIX):
                    parts.append(flat.per_sample_grads(xt[rows], yt[rows]))
        except Exception:
            self._check_sample(flat, xt, yt, "input")  # a clear error when it finds the cause
            raise
        grads = parts[0] if len(parts) == 1 else torch.cat(parts)
        return check_finite(self._select(grads), "per-sample gradients")

    def _column_regularization(
        self: _Fitted, col_block: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """``lambda`` of each column's block, ``(m,)``."""
        reg = torch.tensor(self._block_reg, dtype=dtype, device=col_block.device)
        return reg[col_block]
