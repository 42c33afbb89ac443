"""The working space of the per-layer backends: per-layer gradients and curvature passes.

:class:`WorkingSpaceMixin` holds the part of
:class:`~infl_array.torch.layerwise.base.LayerwiseInfluence` that works in each layer's
``(d_out, d_in)`` working space (the layer's own, or a projected one where a subclass overrides
:meth:`~WorkingSpaceMixin._dims` and :meth:`~WorkingSpaceMixin._working`): per-sample
working-space gradients in memory-bounded chunks, and the passes over the fit data that build
per-layer K-FAC / EK-FAC curvature. Its methods are those of the base class (they read its
settings and fitted state); the split keeps each class to one job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from infl_array.engine.budget import Budget
from infl_array.engine.progress import activity
from infl_array.torch.full.functional import FlatModel, check_finite
from infl_array.torch.layerwise.capture import LayerRecord, LayerSpec, sample_chunks
from infl_array.torch.layerwise.kronecker import KroneckerCurvature

__all__ = ["CURVATURE", "SampleHook", "WorkingSpaceMixin"]

CURVATURE = "the Kronecker factors and eigenbases of all layers"
"""What the fitted curvature is held as in the memory budget (a lasting holding)."""

SampleHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]
"""``hook(x, y, gradients)``: a fit batch and its per-sample working-space gradients."""


class _Layerwise(Protocol):
    """What the mixin's methods use of the base class (its settings and fitted state)."""

    layers: list[LayerSpec]
    budget: Budget
    lam: float

    @property
    def work_dtype(self) -> torch.dtype: ...

    @property
    def _itemsize(self) -> int: ...

    def _require_fit(self) -> FlatModel: ...

    def _empty(self, n: int, width: int, what: str) -> torch.Tensor: ...

    def _fit_records(
        self, kind: str, desc: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[LayerRecord]]]: ...

    def _dims(self, i: int) -> tuple[int, int]: ...

    def _diagonal_in(self, i: int) -> bool: ...

    def _working(
        self, i: int, rec: LayerRecord, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _row_chunks(
        self, i: int, rec: LayerRecord, dims: tuple[int, int] | None = None
    ) -> Iterator[slice]: ...

    def _working_gradients(
        self,
        records: list[LayerRecord],
        what: str,
        use: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        form: bool = True,
    ) -> torch.Tensor | None: ...

    def _fit_pass(
        self,
        desc: str,
        use: Callable[[int, torch.Tensor, torch.Tensor], None],
        keep: SampleHook | None = None,
    ) -> None: ...


class WorkingSpaceMixin:
    """Per-layer working-space gradients and curvature passes (see the module docstring)."""

    def _dims(self: _Layerwise, i: int) -> tuple[int, int]:
        """``(d_out, d_in)`` of layer ``i``'s working space."""
        spec = self.layers[i]
        return spec.d_out, spec.width_in

    def _diagonal_in(self: _Layerwise, i: int) -> bool:
        """Whether layer ``i``'s working inputs are one-hot rows (an embedding's): its input
        factor is diagonal (see :class:`~infl_array.torch.layerwise.kronecker.KroneckerCurvature`).
        """
        return self.layers[i].kind == "embedding"

    def _working(
        self: _Layerwise, i: int, rec: LayerRecord, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations ``(n, T, d_in)`` and gradients ``(n, T, d_out)`` in the working space."""
        return rec.activations(rows), rec.output_grads(rows)

    def _row_chunks(
        self: _Layerwise, i: int, rec: LayerRecord, dims: tuple[int, int] | None = None
    ) -> Iterator[slice]:
        """Chunks of samples whose temporaries (in ``dims``, the working space by default) fit
        the memory budget."""
        d_out, d_in = self._dims(i) if dims is None else dims
        per = self._itemsize * (2 * rec.positions * (d_in + d_out) + 3 * d_out * d_in)
        what = f"the per-sample gradients of layer {self.layers[i].name!r} ({d_out} x {d_in})"
        return sample_chunks(rec.n, per, self.budget, what)

    def _working_gradients(
        self: _Layerwise,
        records: list[LayerRecord],
        what: str,
        use: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        form: bool = True,
    ) -> torch.Tensor | None:
        """The per-sample working-space gradients of a captured batch, ``(n, width)``: each
        layer's ``(d_out, d_in)`` matrix flattened row-major, layers in order (None when not
        ``form``). ``use(i, acts, grads)`` sees each layer's working tensors on the way, chunk
        by chunk (``what`` names the result in a budget error)."""
        dims = [self._dims(i) for i in range(len(records))]
        width = sum(d_out * d_in for d_out, d_in in dims)
        out = self._empty(records[0].n, width, what) if form else None
        # held by the caller from here on (a fit pass keeps it, a factor call returns it)
        offset = 0
        for i, rec in enumerate(records):
            for rows in self._row_chunks(i, rec):
                acts, grads = self._working(i, rec, rows)
                if use is not None:
                    use(i, acts, grads)
                if out is not None:
                    m = grads.transpose(1, 2) @ acts
                    out[rows, offset : offset + m[0].numel()] = m.flatten(1)
            offset += dims[i][0] * dims[i][1]
        return out

    def _fit_pass(
        self: _Layerwise,
        desc: str,
        use: Callable[[int, torch.Tensor, torch.Tensor], None],
        keep: SampleHook | None = None,
    ) -> None:
        """One curvature pass over the fit data: ``use(i, acts, grads)`` on each layer's working
        tensors, chunk by chunk; with ``keep``, also ``keep(x, y, gradients)`` per batch (see
        :meth:`_fit_kronecker`)."""
        with activity(f"fitting {type(self).__name__}: {desc}"):
            for x, y, records in self._fit_records("curvature", desc):
                out = self._working_gradients(records, "fit gradients", use, form=keep is not None)
                if keep is not None and out is not None:
                    keep(x, y, out)

    def _fit_kronecker(
        self: _Layerwise, correct: bool, keep: SampleHook | None = None
    ) -> list[KroneckerCurvature]:
        """Per-layer K-FAC (``correct=False``) or EK-FAC curvature from the fit data.

        With ``keep``, the last pass over the fit data (the covariance pass for K-FAC, the
        eigenvalue pass for EK-FAC) also forms each batch's per-sample working-space gradients
        (:meth:`_working_gradients`) from the working tensors it has anyway, and calls
        ``keep(x, y, gradients)``.
        """
        like = self._require_fit().theta.new_empty(0, dtype=self.work_dtype)
        held = sum(
            KroneckerCurvature.nbytes(*self._dims(i), like.element_size(), self._diagonal_in(i))
            for i in range(len(self.layers))
        )
        self.budget.release_all(CURVATURE)  # a refit replaces the curvature
        self.budget.reserve(
            held,
            CURVATURE,
            "raise memory_budget, use ProjectedInfluence (its factors live in the projected "
            "space), or leave the widest layers out by freezing them.",
            lasting=True,
        )
        curv = [
            KroneckerCurvature(*self._dims(i), like, spec.name, self._diagonal_in(i))
            for i, spec in enumerate(self.layers)
        ]

        def covariances(i: int, acts: torch.Tensor, grads: torch.Tensor) -> None:
            curv[i].add_covariances(acts, grads)

        def moments(i: int, acts: torch.Tensor, grads: torch.Tensor) -> None:
            curv[i].add_eigenvalue_moments(acts, grads, self.budget)

        self._fit_pass("K-FAC factors", covariances, None if correct else keep)
        for c in curv:
            c.eigendecompose()
        if correct:
            self._fit_pass("EK-FAC eigenvalues", moments, keep)
            for c in curv:
                c.finish_correction()
        for c in curv:
            assert c.eigenvalues is not None
            check_finite(c.eigenvalues, f"the curvature eigenvalues of layer {c.name!r}")
            c.check_invertible(self.lam)
        return curv
