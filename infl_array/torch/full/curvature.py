"""Passes over the fit data and the curvature they give, for the torch backends.

:class:`CurvatureMixin` holds the part of
:class:`~infl_array.torch.full.base.TorchInfluenceBase` that touches the fit data: batches weighted
so that ragged batches give exactly the curvature of the mean loss over all points
(``hessian_average="batch"``: pyDVL's equal weighting of the fit DataLoader's batches), the
block-diagonal curvature times vectors (one data pass for all columns) and the explicit
curvature blocks and Hessian. Its methods are those of the base class (they read its fitted
state); the split only keeps modules small.

Memory: a curvature pass holds its working space in the backend's memory budget, its samples
as many as fit (:meth:`~infl_array.torch.full.gradients.GradientsMixin._pass_rows`; the batch
weights keep the sum exact). Per sample, a pass of Hessian products with ``m`` columns costs
``2 + m / 2`` graphs of one sample's loss (the gradient's graph, then its vector-Jacobian
product vmapped over the columns; measured peaks at 1e5 parameters: 1.5 graphs at one column,
4.9 at ten), a Gauss-Newton pass a per-sample gradient pass; the products and their running
sum (two ``(n_params, m)`` matrices) are held for the whole pass. ``hessian_average="batch"``
keeps the fit DataLoader's batches whole (a batch that does not fit is refused, naming the
fix). The explicit Hessian (``DirectInfluence``) is held as its built state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from infl_array.engine.budget import Budget
from infl_array.torch.data.views import IndexedData
from infl_array.torch.full.functional import FlatModel, check_finite
from infl_array.torch.full.gradients import PASS_FIX
from infl_array.torch.full.param_blocks import ParameterBlocks, SecondOrderMode

__all__ = ["CurvatureMixin"]


class _Fitted(Protocol):
    """What the mixin's methods use of the base class (its fitted state and helpers)."""

    second_order_mode: SecondOrderMode
    budget: Budget
    _blocks: ParameterBlocks
    _fit_data: IndexedData | None
    _hessian_average: str

    @property
    def n_params(self) -> int: ...

    @property
    def pass_size(self) -> int: ...

    def _require_fit(self) -> FlatModel: ...

    def _prepare(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _select(self, grads: torch.Tensor) -> torch.Tensor: ...

    def _fit_batches(
        self, rows: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]: ...

    def _mean_over_fit(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        per_sample: int = 0,
        what: str = "a pass over the fit data",
    ) -> torch.Tensor: ...

    def _pass_rows(self, per_sample: int, what: str) -> int: ...

    def _graph_bytes(self) -> int: ...

    def _matmat_sample_bytes(self, m: int) -> int: ...

    def _batch_matmat(self, e: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def curvature_matmat(self, v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor: ...


class CurvatureMixin:
    """Fit-data passes and curvature products of the torch backends (see the module docstring)."""

    def _fit_batches(
        self: _Fitted, rows: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """Yield ``(x, y, weight)`` for all fit data, on the model's device, ``rows`` samples
        at a time (default :attr:`pass_size`).

        ``weight`` is ``n_batch / n`` (mean over samples) or, with ``hessian_average="batch"``,
        ``1 / n_batches`` over the fit DataLoader's own batches (kept whole: ``rows`` is not
        used).
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
        for xb, yb in self._fit_data.batches(rows or self.pass_size):
            x, y = self._prepare(xb, yb)
            yield x, y, x.shape[0] / n

    def _mean_over_fit(
        self: _Fitted,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        per_sample: int = 0,
        what: str = "a pass over the fit data",
    ) -> torch.Tensor:
        """Sum over fit batches of ``fn(x_b, y_b) * weight_b`` (see :meth:`_fit_batches`),
        each batch's working space (``per_sample`` bytes a sample) held in the budget while
        ``fn`` runs, the batches as large as fit."""
        rows = self._pass_rows(per_sample, what) if per_sample else None
        total: torch.Tensor | None = None
        for x, y, w in self._fit_batches(rows):
            with self.budget.hold(per_sample * x.shape[0], what, PASS_FIX):
                part = fn(x, y) * w
            total = part if total is None else total.add_(part)
        assert total is not None  # fit data is never empty
        return total

    def _matmat_sample_bytes(self: _Fitted, m: int) -> int:
        """Working space per sample of a curvature pass with ``m`` columns (the module
        docstring)."""
        flat = self._require_fit()
        if self.second_order_mode is SecondOrderMode.HESSIAN:
            return (4 + m) * self._graph_bytes() // 2
        return 2 * self._graph_bytes() + flat.n_params * flat.theta.element_size()

    def _batch_matmat(
        self: _Fitted, e: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Curvature of one batch (its mean loss) times ``e`` (full flat parameter space)."""
        flat = self._require_fit()
        if self.second_order_mode is SecondOrderMode.HESSIAN:
            return flat.batch_hvp(e, x, y)
        g = flat.per_sample_grads(x, y)
        return g.T @ (g @ e) / x.shape[0]

    def curvature_matmat(self: _Fitted, v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
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
        m = v.shape[1]
        what = f"{type(self).__name__}'s curvature pass of {m} vectors"
        per_sample = self._matmat_sample_bytes(m)
        # the products of a batch and their running sum, for the whole pass
        with self.budget.hold(2 * flat.n_params * m * v.element_size(), what, PASS_FIX):
            if blocks.is_identity:
                return self._mean_over_fit(
                    lambda x, y: self._batch_matmat(v, x, y), per_sample, what
                )
            index = blocks.index.to(flat.device)
            e = torch.zeros((flat.n_params, m), dtype=v.dtype, device=v.device)
            e.index_add_(0, index, v)
            out = self._mean_over_fit(lambda x, y: self._batch_matmat(e, x, y), per_sample, what)
        out = out[index]
        if len(blocks.sizes) > 1:
            out = out * (blocks.row_block(v.device)[:, None] == col_block[None, :])
        return out

    def block_matmat(self: _Fitted, block: int, v: torch.Tensor) -> torch.Tensor:
        """``C_bb @ v`` for ``v`` of shape ``(size of block b, m)`` (one data pass)."""
        sl = self._blocks.slices[block]
        if self._blocks.is_identity:
            return self.curvature_matmat(v, torch.zeros(v.shape[1], dtype=torch.long))
        full = torch.zeros((self.n_params, v.shape[1]), dtype=v.dtype, device=v.device)
        full[sl] = v
        cols = torch.full((v.shape[1],), block, dtype=torch.long, device=v.device)
        return self.curvature_matmat(full, cols)[sl]

    def curvature_blocks(self: _Fitted) -> list[torch.Tensor]:
        """Explicit diagonal blocks ``C_bb`` of the curvature (no regularization), in order."""
        flat = self._require_fit()
        blocks = self._blocks
        if self.second_order_mode is SecondOrderMode.GAUSS_NEWTON:

            def batch_gn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                g = self._select(flat.per_sample_grads(x, y))
                return blocks.gram(g) / x.shape[0]

            full = self._mean_over_fit(batch_gn)
        elif blocks.is_identity:
            full = self._mean_over_fit(flat.batch_hessian)
        else:
            eye = torch.eye(blocks.size, dtype=flat.dtype, device=flat.device)
            full = self.curvature_matmat(eye, blocks.row_block(flat.device))
            full = (full + full.T) / 2
        check_finite(full, "the curvature matrix")
        return [full[sl, sl] for sl in blocks.slices]

    def hessian(self: _Fitted) -> torch.Tensor:
        """Explicit Hessian of the mean fit loss over the selected parameters (no blocks, no
        regularization), ``(n_params, n_params)``."""
        flat = self._require_fit()
        h = check_finite(self._mean_over_fit(flat.batch_hessian), "the Hessian")
        if self._blocks.is_identity:
            return h
        index = self._blocks.index.to(flat.device)
        return h[index][:, index]
