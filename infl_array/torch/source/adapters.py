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

from infl_array.engine.budget import Budget
from infl_array.errors import StaleCacheError
from infl_array.protocol import (
    Budgeted,
    ChecksData,
    Diagnosed,
    FactorDiagonal,
    FactorisedInfluence,
    FactorProduct,
    FactorWidths,
    Fingerprinted,
    Fittable,
    ModuleBacked,
    ParameterFingerprinted,
    Preparable,
)
from infl_array.torch.data.views import IndexedData
from infl_array.torch.source.pairing import FactorPairing, Factors, Pairing

__all__ = [
    "ModelAdapter",
    "ProtocolAdapter",
    "as_factor_tensor",
    "check_fitted",
    "check_unchanged_since_fit",
]


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
    """What a :class:`~infl_array.torch.source.source.ModelBlockSource` needs from an influence
    model. How its blocks are made from test factors is declared by :meth:`pairing`."""

    name: str

    @property
    def device(self) -> torch.device:
        """Where the model's factors live (stored factors are read back to it)."""
        return torch.device("cpu")

    def pairing(self, factors: Factors, train: IndexedData) -> Pairing:
        """How blocks are made (:mod:`~infl_array.torch.source.pairing`): by default plain
        inner products of test and train factors living in one space."""
        return FactorPairing(self, factors, same_space=True)

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

    def description(self) -> dict[str, Any]:
        """What the model computes, for ``computed_by`` and ``info`` (its config by default)."""
        return self.config()

    def parameter_fingerprints(self) -> dict[str, str] | None:
        """``{parameter name: digest}`` the influence is computed at, where the model says."""
        return None

    def check_data(self, x: Any, y: Any, what: str) -> None:
        """Refuse data the model cannot take (first samples), before anything is computed."""

    def notes(self) -> dict[str, str]:
        """What the model's solves found (``{key: message}``); empty when all is well."""
        return {}

    def prepare(self) -> None:
        """Run the model's deferred fitting work now (before it is sent to workers)."""

    def budget(self) -> Budget | None:
        """The memory budget the model holds its memory in, where it has one."""
        return None

    def test_factor_width(self) -> int | None:
        """Columns of the test factors, where the model declares them."""
        return None

    def train_factor_width(self) -> int | None:
        """Columns of the train factors, where the model declares them."""
        return None


class ProtocolAdapter(ModelAdapter):
    """Adapter for objects implementing the factorised protocol.

    The model's optional members are declared by the protocols of :mod:`infl_array.protocol`
    and used when the model implements them: :class:`~infl_array.protocol.FactorProduct` and
    :class:`~infl_array.protocol.FactorDiagonal` for models whose block is not the plain inner
    product of their factors (e.g. structured per-layer factors),
    :class:`~infl_array.protocol.ModuleBacked` (the ``nn.Module``) for the device factors live
    on, :class:`~infl_array.protocol.ChecksData` (refuses data the model or loss cannot take,
    on the first samples: called by ``create`` and ``open`` before anything is written),
    :class:`~infl_array.protocol.Diagnosed` (``{key: message}`` of what the solves found,
    recorded in the store as notes), :class:`~infl_array.protocol.Preparable` (runs deferred
    fitting work once: called before the model is sent to worker processes, so that they do
    not each repeat it) and :class:`~infl_array.protocol.Fingerprinted`.
    """

    def __init__(self, model: FactorisedInfluence) -> None:
        self.model = model
        self.name = type(model).__name__

    @property
    def device(self) -> torch.device:
        module = self.model.model if isinstance(self.model, ModuleBacked) else None
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                return p.device
        return torch.device("cpu")

    def pairing(self, factors: Factors, train: IndexedData) -> Pairing:
        same_space = not isinstance(self.model, FactorProduct)
        return FactorPairing(self, factors, same_space=same_space)

    def product(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, FactorProduct):
            return torch.as_tensor(self.model.factor_product(test_f, train_f))
        return super().product(test_f, train_f)

    def diagonal(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, FactorDiagonal):
            return torch.as_tensor(self.model.factor_diagonal(test_f, train_f))
        return super().diagonal(test_f, train_f)

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
        if isinstance(self.model, Fingerprinted):
            return str(self.model.model_fingerprint())
        return None

    def description(self) -> dict[str, Any]:
        describe = getattr(self.model, "description", None)
        found = describe() if callable(describe) else None
        return dict(found) if isinstance(found, Mapping) else self.config()

    def parameter_fingerprints(self) -> dict[str, str] | None:
        if isinstance(self.model, ParameterFingerprinted):
            return {str(k): str(v) for k, v in self.model.parameter_fingerprints().items()}
        return None

    def check_data(self, x: Any, y: Any, what: str) -> None:
        if isinstance(self.model, ChecksData):
            self.model.check_data(x, y, what=what)

    def prepare(self) -> None:
        if isinstance(self.model, Preparable):
            self.model.prepare()

    def budget(self) -> Budget | None:
        found = self.model.budget if isinstance(self.model, Budgeted) else None
        return found if isinstance(found, Budget) else None

    def test_factor_width(self) -> int | None:
        if isinstance(self.model, FactorWidths):
            return int(self.model.test_factor_width)
        return None

    def train_factor_width(self) -> int | None:
        if isinstance(self.model, FactorWidths):
            return int(self.model.train_factor_width)
        return None

    def notes(self) -> dict[str, str]:
        if not isinstance(self.model, Diagnosed):
            return {}
        found = self.model.diagnostics()
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def check_fitted(model: object) -> None:
    """``ValueError`` when ``model`` is not fitted (:class:`~infl_array.protocol.Fittable`)."""
    if not isinstance(model, Fittable):
        return
    fitted = model.is_fitted() if callable(model.is_fitted) else model.is_fitted
    if not fitted:
        raise ValueError(
            f"{type(model).__name__} is not fitted: call .fit(train_data) first, then pass the "
            "fitted model."
        )


def check_unchanged_since_fit(model: object) -> None:
    """``StaleCacheError`` when the model's weights changed since ``fit``, naming them
    (:class:`~infl_array.protocol.ParameterFingerprinted`)."""
    if not isinstance(model, ParameterFingerprinted):
        return
    changed = sorted(model.changed_parameters())
    if changed:
        shown = ", ".join(changed[:8]) + (
            f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        )
        raise StaleCacheError(
            ["model"],
            f"{type(model).__name__} was fitted at other weights than its model holds now: "
            f"{len(changed)} parameter(s) changed since fit ({shown}). Its curvature belongs to "
            "the old weights; call .fit(train_data) again after changing the model, then pass "
            "the refitted backend (and a new store: the old one holds the old weights' values).",
        )
