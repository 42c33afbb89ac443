"""Adapters: what a block source needs from an influence model, whatever its kind.

:class:`ModelAdapter` is the interface :class:`~infl_array.torch.source.source.ModelBlockSource`
uses; :class:`ProtocolAdapter` serves objects implementing the factorised protocol
(:class:`~infl_array.protocol.FactorisedInfluence`: our torch influence models and plug-ins);
:class:`~infl_array.torch.source.pydvl.PyDVLAdapter` serves fitted pyDVL models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["ModelAdapter", "ProtocolAdapter", "as_factor_tensor", "check_fitted"]


def as_factor_tensor(a: Any, what: str) -> torch.Tensor:
    """A factor as a 2-D torch tensor (numpy arrays become CPU tensors)."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        arr = np.ascontiguousarray(a)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        raise TypeError(
            f"{what} returned {type(a).__name__}, expected a torch tensor or numpy array of "
            "shape (n_samples, k)."
        )
    if t.ndim != 2:
        raise ValueError(
            f"{what} returned an array of shape {tuple(t.shape)}, expected (n_samples, k): one "
            "row of factors per sample."
        )
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float64)
    return t


class ModelAdapter:
    """What a :class:`~infl_array.torch.source.source.ModelBlockSource` needs from a model."""

    name: str
    has_train_factors: bool = True
    structured: bool = False
    """Whether blocks come from :meth:`product` of differently shaped factors (not ``a @ b.T``)."""

    @property
    def device(self) -> torch.device:
        """Where the model's factors live (stored factors are read back to it)."""
        return torch.device("cpu")

    def product(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        """The block ``(n_test, n_train)`` of two factor sets: their inner products."""
        return test_f @ train_f.to(device=test_f.device, dtype=test_f.dtype).T

    def diagonal(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        """Row-wise products of factor sets of the same points (the self-influence)."""
        right = train_f.to(device=test_f.device, dtype=test_f.dtype)
        return (test_f * right).sum(dim=1)

    def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Block from test factors and raw train data (influence models without train factors)."""
        raise NotImplementedError

    def diagonal_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Self-influence from test factors of train data and that data (no train factors)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def model_fingerprint(self) -> str | None:
        raise NotImplementedError

    def check_data(self, x: Any, y: Any, what: str) -> None:
        """Refuse data the model cannot take (first samples), before anything is computed."""

    def notes(self) -> dict[str, str]:
        """What the model's solves found (``{key: message}``); empty when all is well."""
        return {}

    def prepare(self) -> None:
        """Run the model's deferred fitting work now (before it is sent to workers)."""


class ProtocolAdapter(ModelAdapter):
    """Adapter for objects implementing the factorised protocol.

    Optional members of the model are used when present: ``factor_product(test_f, train_f)``
    and ``factor_diagonal(test_f, train_f)`` for models whose block is not the plain inner
    product of their factors (e.g. structured per-layer factors), and ``model`` (the
    ``nn.Module``) for the device factors live on, ``check_data(x, y, what=...)`` (refuses
    data the model or loss cannot take, on the first samples: called by ``create`` and ``open``
    before anything is written) and ``diagnostics()`` (``{key: message}`` of what the solves
    found, recorded in the store as notes: :mod:`infl_array.storage.notes`) and ``prepare()`` (runs
    deferred fitting work once: called before the model is sent to worker processes, so that
    they do not each repeat it).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = type(model).__name__
        self._product = getattr(model, "factor_product", None)
        self._diagonal = getattr(model, "factor_diagonal", None)
        self.structured = self._product is not None
        self._check = getattr(model, "check_data", None)
        self._diagnostics = getattr(model, "diagnostics", None)
        self._prepare = getattr(model, "prepare", None)

    @property
    def device(self) -> torch.device:
        module = getattr(self.model, "model", None)
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                return p.device
        return torch.device("cpu")

    def product(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        if self._product is None:
            return super().product(test_f, train_f)
        return torch.as_tensor(self._product(test_f, train_f))

    def diagonal(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        if self._diagonal is None:
            return super().diagonal(test_f, train_f)
        return torch.as_tensor(self._diagonal(test_f, train_f))

    def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return as_factor_tensor(self.model.test_factors(x, y), f"{self.name}.test_factors")

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return as_factor_tensor(self.model.train_factors(x, y), f"{self.name}.train_factors")

    def config(self) -> dict[str, Any]:
        cfg = self.model.influence_config()
        if not isinstance(cfg, Mapping):
            raise TypeError(
                f"{self.name}.influence_config() returned {type(cfg).__name__}, expected a "
                "JSON-able dict identifying the influence model and its settings."
            )
        return dict(cfg)

    def model_fingerprint(self) -> str | None:
        fn = getattr(self.model, "model_fingerprint", None)
        if fn is None or not callable(fn):
            return None
        return str(fn())

    def check_data(self, x: Any, y: Any, what: str) -> None:
        if callable(self._check):
            self._check(x, y, what=what)

    def prepare(self) -> None:
        if callable(self._prepare):
            self._prepare()

    def notes(self) -> dict[str, str]:
        if not callable(self._diagnostics):
            return {}
        found = self._diagnostics()
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def check_fitted(model: object) -> None:
    fitted = getattr(model, "is_fitted", True)
    if callable(fitted):
        fitted = fitted()
    if not fitted:
        raise ValueError(
            f"{type(model).__name__} is not fitted: call .fit(train_data) first, then pass the "
            "fitted model."
        )
