"""Adapters: what a block source needs from an influence model, whatever its kind.

:class:`ModelAdapter` is the interface :class:`~infl_array.torch.source.ModelBlockSource`
uses; :class:`ProtocolAdapter` serves objects implementing the factorised protocol
(:class:`~infl_array.protocol.FactorisedInfluence`: our torch influence models and plug-ins);
:class:`~infl_array.torch.pydvl.PyDVLAdapter` serves fitted pyDVL models.
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
    """What a :class:`~infl_array.torch.source.ModelBlockSource` needs from an influence model."""

    name: str
    has_train_factors: bool = True

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


class ProtocolAdapter(ModelAdapter):
    """Adapter for objects implementing the factorised protocol."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = type(model).__name__

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


def check_fitted(model: object) -> None:
    fitted = getattr(model, "is_fitted", True)
    if callable(fitted):
        fitted = fitted()
    if not fitted:
        raise ValueError(
            f"{type(model).__name__} is not fitted: call .fit(train_data) first, then pass the "
            "fitted model."
        )
