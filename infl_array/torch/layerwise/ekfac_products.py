"""Products of EK-FAC factors: influence blocks and self-influence from stored factors.

:class:`EkfacProductsMixin` holds the part of
:class:`~infl_array.torch.layerwise.ekfac.EkfacInfluence` that multiplies test factors with
train factors layer by layer (:meth:`~EkfacProductsMixin.factor_product`,
:meth:`~EkfacProductsMixin.factor_diagonal`): full layers as a plain product, compact layers
(rotated output gradient and input kept apart) contracted without forming ``g a^T``, sparse
embedding rows as a sparse product. :class:`_NormalizedTest` keeps the normalized test columns
of the last test factors. The mixin's methods are those of the backend (they read its fitted
layout); the split keeps each class to one job.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from infl_array.engine.budget import Budget
from infl_array.errors import MemoryBudgetError
from infl_array.torch.layerwise.capture import LayerSpec, check_budget, sample_chunks
from infl_array.torch.layerwise.subnormal import flush_subnormals
from infl_array.torch.layerwise.underflow import needs_normalizing, normalized_rows

__all__ = ["NORMALIZED", "NORMALIZED_ONCE", "EkfacProductsMixin"]

NORMALIZED = "normalized test columns"
"""What the kept normalized test columns are held as in the memory budget."""

NORMALIZED_ONCE = "normalized test columns of one product"
"""What normalized test columns made for one product (no room to keep them) are held as."""


class _Ekfac(Protocol):
    """What the mixin's methods use of the backend (its settings and fitted layout)."""

    layers: list[LayerSpec]
    memory_budget: int
    budget: Budget
    _compact: list[bool]
    _token_positions: list[int]
    _normalized: _NormalizedTest

    @property
    def test_factor_width(self) -> int: ...

    @property
    def train_factor_width(self) -> int: ...

    def _require_fitted(self) -> None: ...

    def _train_width(self, i: int) -> int: ...

    def _checked(self, test_f: torch.Tensor, train_f: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def _layer_parts(
        self, test_f: torch.Tensor, train_f: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]: ...

    def _split_compact(self, i: int, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _split_tokens(self, i: int, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _token_product(
        self, i: int, test: torch.Tensor, train: torch.Tensor, out: torch.Tensor
    ) -> None: ...

    def _compact_product(
        self,
        i: int,
        test: tuple[torch.Tensor, torch.Tensor | None],
        train: torch.Tensor,
        out: torch.Tensor,
    ) -> None: ...


class EkfacProductsMixin:
    """Test-against-train products of EK-FAC factors (see the module docstring)."""

    def _checked(
        self: _Ekfac, test_f: torch.Tensor, train_f: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        self._require_fitted()
        for f, width, what in (
            (test_f, self.test_factor_width, "test"),
            (train_f, self.train_factor_width, "train"),
        ):
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[1] != width:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"{what} factors must be a tensor of shape (n, {width}) from this model's "
                    f"{what}_factors, got {shape}."
                )
        dtype = torch.promote_types(test_f.dtype, train_f.dtype)
        return test_f.to(dtype), train_f.to(device=test_f.device, dtype=dtype)

    def _layer_parts(
        self: _Ekfac, test_f: torch.Tensor, train_f: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Per layer: its index, test columns and train columns."""
        t_off = r_off = 0
        for i, spec in enumerate(self.layers):
            width = self._train_width(i)
            yield i, test_f[:, t_off : t_off + spec.n_params], train_f[:, r_off : r_off + width]
            t_off += spec.n_params
            r_off += width

    def _split_compact(
        self: _Ekfac, i: int, train: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A compact layer's train columns: ``Q_G^T g`` ``(n, d_out)``, ``Q_A^T (a, 1)``."""
        d_out = self.layers[i].d_out
        return train[:, :d_out], train[:, d_out:]

    @flush_subnormals
    def factor_product(self: _Ekfac, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        """The influence block of test factors against train factors, ``(n_test, n_train)``.

        A compact layer's rotated train gradients ``g a^T`` are never formed: the test columns,
        as ``(n_test, d_out, width_in)`` matrices, are multiplied by the train rows' longer
        part in one matrix product, then contracted with the other part (see
        :meth:`_compact_product`). The block costs ``n_test * n_train * n_params``
        multiply-adds, as a product of full gradients would, at matrix-product speed.

        Parameters
        ----------
        test_f : torch.Tensor
            ``(n_test, test_factor_width)`` from :meth:`test_factors`.
        train_f : torch.Tensor
            ``(n_train, train_factor_width)`` from :meth:`train_factors`.

        Returns
        -------
        torch.Tensor
            On ``test_f``'s device, in the promoted dtype of both.
        """
        test_f, train_f = self._checked(test_f, train_f)
        out = test_f.new_zeros((test_f.shape[0], train_f.shape[0]))
        for i, test, train in self._layer_parts(test_f, train_f):
            if self._token_positions[i]:
                self._token_product(i, test, train, out)
                continue
            if not self._compact[i]:
                out.addmm_(test, train.T)
                continue
            with self._normalized.columns(self, test_f, i, test) as columns:
                self._compact_product(i, columns, train, out)
        return out

    def _split_tokens(
        self: _Ekfac, i: int, train: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An embedding's sparse train rows: ids ``(n, T)`` and gradients ``(n, T, width)``."""
        positions, width = self._token_positions[i], self.layers[i].d_out
        ids = train[:, :positions].round().long()
        return ids, train[:, positions:].reshape(-1, positions, width)

    def _token_product(
        self: _Ekfac, i: int, test: torch.Tensor, train: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Add an embedding's influences to ``out``: ``sum_t T[:, :, id_t] . g_t``.

        The train rows are a sparse ``(n_train, width * vocab)`` matrix with ``T * width``
        entries per row (the gradient matrix's columns at the row's tokens), multiplied with
        the test columns (one transposed copy): ``n_test * n_train * T * width`` multiply-adds
        instead of ``n_test * n_train * width * vocab``.
        """
        spec = self.layers[i]
        ids, grads = self._split_tokens(i, train)
        check_budget(
            test.numel() * test.element_size(),
            self.budget,
            f"the test columns of embedding {spec.name!r}, transposed",
            "raise memory_budget or pass fewer test rows at a time.",
        )
        n, positions = ids.shape
        rows = torch.arange(n, device=ids.device)[:, None, None].expand(n, positions, spec.d_out)
        width = torch.arange(spec.d_out, device=ids.device)[None, None, :]
        cols = width * spec.d_in + ids[:, :, None]  # entry (o, id) of the (width, vocab) matrix
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows.flatten(), cols.flatten()]),
            grads.flatten().to(test.dtype),
            (n, spec.n_params),
            check_invariants=True,  # ids in range: the ids of real tokens, 0 where padded
        )
        out += torch.sparse.mm(sparse, test.T.contiguous()).T

    def _compact_product(
        self: _Ekfac,
        i: int,
        test: tuple[torch.Tensor, torch.Tensor | None],
        train: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Add a compact layer's influences to ``out``: ``sum_oi T[t,o,i] g[r,o] a[r,i]``.

        The contraction over the longer side (``a``'s ``width_in`` or ``g``'s ``d_out``) is a
        matrix product whose intermediate, ``(n_test, shorter side, train chunk)``, is kept
        within the memory budget by chunking the train rows. ``test`` is the layer's test
        columns and their row scales (None: not normalized); with scales, the train parts
        are normalized too and the scales applied to the result, so that no product
        underflows into subnormal numbers (:mod:`~infl_array.torch.layerwise.underflow`).
        """
        test_cols, test_scale = test
        g, a = self._split_compact(i, train)
        scale = None
        if test_scale is not None:
            (g, g_scale), (a, a_scale) = normalized_rows(g), normalized_rows(a)
            # float64: the scales' product can be below float32's range where the result is not
            scale = test_scale.double()[:, None] * (g_scale.double() * a_scale.double())[None, :]
        d_out, width_in = g.shape[1], a.shape[1]
        t = test_cols.reshape(test_cols.shape[0], d_out, width_in)
        if width_in >= d_out:
            long, short = a, g  # (n_test, d_out, c) = T @ a^T, then . g
        else:
            long, short, t = g, a, t.transpose(1, 2)  # (n_test, width_in, c) = T^T @ g^T, . a
        per_row = t.shape[0] * t.shape[1] * t.element_size()
        what = f"one train row of layer {self.layers[i].name!r} against {t.shape[0]} test rows"
        for chunk in sample_chunks(g.shape[0], per_row, self.budget, what):
            partial = torch.matmul(t, long[chunk].T)  # (n_test, short, chunk)
            # multiply in place and sum: einsum("tsc,cs->tc") took as long as the matmul here
            part = partial.mul_(short[chunk].T).sum(1)
            if scale is not None:
                part = part.double().mul_(scale[:, chunk]).to(out.dtype)
            out[:, chunk] += part

    @flush_subnormals
    def factor_diagonal(self: _Ekfac, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        """Row-wise influences of ``test_f[k]`` against ``train_f[k]`` (self-influence), ``(n,)``.

        Parameters
        ----------
        test_f, train_f : torch.Tensor
            Test and train factors of the same ``n`` samples.

        Returns
        -------
        torch.Tensor
            ``factor_product(test_f, train_f).diagonal()`` without the off-diagonal work.
        """
        test_f, train_f = self._checked(test_f, train_f)
        if test_f.shape[0] != train_f.shape[0]:
            raise ValueError(
                f"factor_diagonal pairs rows: got {test_f.shape[0]} test and {train_f.shape[0]} "
                "train rows; pass the factors of the same samples."
            )
        out = test_f.new_zeros(test_f.shape[0])
        for i, test, train in self._layer_parts(test_f, train_f):
            if self._token_positions[i]:
                ids, grads = self._split_tokens(i, train)
                t = test.reshape(test.shape[0], self.layers[i].d_out, -1)
                index = ids[:, None, :].expand(-1, t.shape[1], -1)
                out += (t.gather(2, index) * grads.transpose(1, 2)).sum((1, 2))
            elif self._compact[i]:
                g, a = self._split_compact(i, train)
                t = test.reshape(-1, g.shape[1], a.shape[1])
                out += torch.einsum("noi,no,ni->n", t, g, a)
            else:
                out += (test * train).sum(1)
        return out


class _NormalizedTest:
    """The compact layers' test columns of the last test factors, normalized once.

    ``factor_product`` is called with the same test factors for every train block of a tile;
    their normalization (:func:`~infl_array.torch.layerwise.underflow.normalized_rows`, one pass
    over the columns) is kept for the last test factors seen (known by a weak reference, so
    that their identity cannot be reused and they are not kept alive here; an in-place change
    is seen through their version counter). The normalized copies are held in the memory
    budget (:data:`NORMALIZED`) before they are made, where it has room for them without
    evicting anything (the memo holds the test factors in use: an eviction would free
    nothing); otherwise a copy is made for one product and held while it runs
    (:data:`NORMALIZED_ONCE`; until issue 21 it was made outside the account), and columns
    the budget has no room for at all, or whose normalized copy would take more than half of
    ``memory_budget`` (beside the fitted state it holds), are used as they are.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._of: weakref.ref[torch.Tensor] | None = None
        self._version = -1
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._held: tuple[Budget, int] | None = None

    @contextmanager
    def columns(
        self, model: _Ekfac, test_f: torch.Tensor, i: int, cols: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Layer ``i``'s test columns ``cols`` (of ``test_f``), normalized where it pays, for
        the ``with`` block: kept where the budget has room now, else made for the block and
        held in the budget while it runs (the caches give bytes back), else as they are."""
        if not needs_normalizing(cols):
            yield cols, None
            return
        budget = model.budget
        spare = budget.total - budget.lasting_bytes()  # beside the fitted state
        if cols.numel() * cols.element_size() > spare // 2:
            yield cols, None
            return
        nbytes = cols.numel() * cols.element_size() + 4 * cols.shape[0]  # g and its scales
        with self._lock:
            kept = self._kept(budget, test_f, i, cols, nbytes)
        if kept is not None:
            yield kept
            return
        try:
            budget.reserve(nbytes, NORMALIZED_ONCE)
        except MemoryBudgetError:
            yield cols, None
            return
        try:
            yield normalized_rows(cols)
        finally:
            budget.release(nbytes, NORMALIZED_ONCE)

    def _kept(
        self, budget: Budget, test_f: torch.Tensor, i: int, cols: torch.Tensor, nbytes: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The kept normalized columns of layer ``i``, made now if the budget has room for
        them without evicting anything (the memo holds the factors in use), else None (the
        lock is held)."""
        of = self._of() if self._of is not None else None
        if of is not test_f or self._version != test_f._version:
            self._forget()
            self._of, self._version = weakref.ref(test_f), test_f._version
        if i in self._layers:
            return self._layers[i]
        if not budget.try_reserve(nbytes, NORMALIZED):
            return None
        held = self._held[1] if self._held is not None else 0
        self._held = (budget, held + nbytes)
        self._layers[i] = normalized_rows(cols)
        return self._layers[i]

    def _forget(self) -> None:
        """Drop the kept copies and give their bytes back (the lock is held)."""
        if self._held is not None:
            self._held[0].release(self._held[1], NORMALIZED)
        self._of, self._version, self._layers, self._held = None, -1, {}, None

    def clear(self) -> None:
        with self._lock:
            self._forget()

    def __del__(self) -> None:
        if self._held is not None:
            self._held[0].release(self._held[1], NORMALIZED)

    def __reduce__(self) -> tuple[type[_NormalizedTest], tuple[()]]:
        return (_NormalizedTest, ())  # workers start empty: no tensors, no lock
