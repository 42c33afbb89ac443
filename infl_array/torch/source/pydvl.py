"""Adapter that lets a fitted pyDVL influence model back an InfluenceArray.

pyDVL is not imported by this module: a model is recognised by duck typing
(:func:`is_pydvl_model`: it has ``influence_factors``, ``influences_from_factors`` and
``is_fitted``), and ``InfluenceMode`` is imported only when a block is computed.

Contract (what :class:`PyDVLAdapter` gives
:class:`~infl_array.torch.source.source.ModelBlockSource`)
--------------------------------------------------------------------------------------------
* test factors: ``model.influence_factors(x, y)`` (pyDVL's ``(H + lambda Id)^-1 grad``);
* a block: ``model.influences_from_factors(test_factors, x_train, y_train,
  mode=InfluenceMode.Up)``: pyDVL's "up" mode has infl_array's sign convention;
* self-influence: the diagonal of the above for the train points against their own test
  factors, computed in chunks of :data:`SELF_INFLUENCE_CHUNK` points (linear cost);
* config: ``{"class": <module.qualname>, "hyperparameters": {...}, "loss": <name>,
  "model_parameters": <sha256>, "fit": <sha256>}``. The hyper-parameters are the model's public
  attributes of plain types (numbers, strings, booleans, enums, and dicts of them) plus its
  regularization; ``fit`` fingerprints what the fitted model holds: the data loaders it keeps
  (hashed with :func:`~infl_array.torch.data.views.as_indexed`) and the tensors it keeps (a Hessian,
  a low-rank representation), so a model fitted on other data (or with another regularization)
  has another config. Tensors are hashed by their bytes, so a refit on another machine or
  device may round differently and count as a different fit.
* model fingerprint: sha256 over the names, dtypes, shapes and values of ``model.model``'s
  parameters and buffers (:func:`~infl_array.torch.full.functional.model_fingerprint`).
"""

from __future__ import annotations

import enum
import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from infl_array.torch.data.views import IndexedData, as_indexed, tensor_bytes
from infl_array.torch.full.functional import model_fingerprint
from infl_array.torch.source.adapters import ModelAdapter
from infl_array.torch.source.pairing import DataPairing, Factors, Pairing

__all__ = ["SELF_INFLUENCE_CHUNK", "PyDVLAdapter", "is_pydvl_model"]

SELF_INFLUENCE_CHUNK = 128
"""Train points per ``influences_from_factors`` call when computing self-influence."""

_REQUIRED = ("influence_factors", "influences_from_factors", "is_fitted")

# Attributes that do not change the values (or are handled separately).
_SKIP_HYPER = frozenset(
    {"model", "loss", "block_mapper", "progress", "warn_on_max_iteration", "parameter_dict"}
)


def is_pydvl_model(obj: object) -> bool:
    """Whether ``obj`` looks like a pyDVL ``InfluenceFunctionModel`` (duck-typed)."""
    return all(hasattr(type(obj), a) or hasattr(obj, a) for a in _REQUIRED)


def _plain(value: Any) -> Any:
    """``value`` as a JSON-able plain value, or ``NotImplemented`` if it has none."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value) if _plain(value.value) is not NotImplemented else value.name
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        out = {k: _plain(v) for k, v in value.items()}
        return NotImplemented if NotImplemented in out.values() else out
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return NotImplemented if NotImplemented in items else items
    return NotImplemented


def _callable_name(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"


def _fit_fingerprint(model: Any) -> str:
    """sha256 over the data loaders and tensors a fitted pyDVL model keeps (depth-limited)."""
    h = hashlib.sha256()
    seen: set[int] = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            return  # the model: fingerprinted separately
        if isinstance(obj, torch.Tensor):
            h.update(f"T{path};{obj.dtype};{tuple(obj.shape)};".encode())
            h.update(tensor_bytes(obj))
        elif isinstance(obj, DataLoader):
            try:
                fp = as_indexed(obj, path).fingerprint()
            except (TypeError, ValueError):
                fp = f"loader:{type(obj.dataset).__qualname__}:{len(obj)}"
            h.update(f"D{path};{fp};".encode())
        elif isinstance(obj, Mapping):
            for k in sorted(obj, key=repr):
                visit(obj[k], f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                visit(v, f"{path}[{i}]", depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not inspect.isroutine(obj):
            h.update(f"O{path};{type(obj).__qualname__};".encode())
            for k, v in sorted(vars(obj).items()):
                plain = _plain(v)
                if plain is not NotImplemented:
                    h.update(f"V{path}.{k}={plain!r};".encode())
                else:
                    visit(v, f"{path}.{k}", depth + 1)

    visit(getattr(model, "block_mapper", None), "block_mapper", 0)
    # Non-composable models (e.g. EkfacInfluence) keep their fitted state in attributes.
    for k, v in sorted(vars(model).items()):
        if k != "block_mapper" and k not in _SKIP_HYPER and _plain(v) is NotImplemented:
            visit(v, k, 1)
    return h.hexdigest()


def _model_device(model: Any) -> torch.device | None:
    dev = getattr(model, "model_device", None)
    if isinstance(dev, torch.device):
        return dev
    module = getattr(model, "model", None)
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
    return None


def _up_mode() -> Any:
    try:
        from pydvl.influence.types import InfluenceMode

        return InfluenceMode.Up
    except ImportError:  # pragma: no cover - duck-typed model without pydvl installed
        return "up"


class PyDVLAdapter(ModelAdapter):
    """:class:`~infl_array.torch.source.source.ModelBlockSource` adapter for a fitted pyDVL model.

    Parameters
    ----------
    model : pydvl.influence.InfluenceFunctionModel
        A fitted pyDVL influence model (e.g. ``DirectInfluence``, ``CgInfluence``).

    Raises
    ------
    ValueError
        If the model is not fitted.
    """

    def __init__(self, model: Any) -> None:
        fitted = model.is_fitted
        if callable(fitted):
            fitted = fitted()
        if not fitted:
            raise ValueError(
                f"pyDVL {type(model).__name__} is not fitted: call .fit(train_data) first "
                "(with a DataLoader over the training data), then pass the fitted model."
            )
        self.model = model
        self.name = type(model).__name__

    def _device(self, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dev = _model_device(self.model)
        return ts if dev is None else tuple(t.to(dev) for t in ts)

    def pairing(self, factors: Factors, train: IndexedData) -> Pairing:
        """pyDVL exposes no train factors: blocks come from test factors and raw train data."""
        return DataPairing(self, factors, train)

    def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._device(x, y)
        f = self.model.influence_factors(x, y)
        return f.detach().reshape(f.shape[0], -1)

    def block_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        x, y = self._device(x, y)
        out = self.model.influences_from_factors(test_f, x, y, mode=_up_mode())
        return out.detach()

    def diagonal_from_data(
        self, test_f: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        x, y = self._device(x, y)
        parts = []
        for s in range(0, x.shape[0], SELF_INFLUENCE_CHUNK):
            e = min(s + SELF_INFLUENCE_CHUNK, x.shape[0])
            block = self.model.influences_from_factors(test_f[s:e], x[s:e], y[s:e], mode=_up_mode())
            parts.append(torch.diagonal(block.detach()))
        return torch.cat(parts)

    def hyperparameters(self) -> dict[str, Any]:
        """Public plain-typed attributes of the model, plus its regularization."""
        out: dict[str, Any] = {}
        for k, v in sorted(vars(self.model).items()):
            if k.startswith("_") or k in _SKIP_HYPER:
                continue
            plain = _plain(v)
            if plain is not NotImplemented:
                out[k] = plain
            elif v is not None and not isinstance(v, torch.Tensor):
                out[k] = _callable_name(v) if callable(v) else type(v).__qualname__
        reg = getattr(self.model, "_regularization_dict", None)
        if reg is None:
            reg = getattr(self.model, "regularization", None)
        plain_reg = _plain(reg)
        out["regularization"] = plain_reg if plain_reg is not NotImplemented else repr(reg)
        return out

    def config(self) -> dict[str, Any]:
        cls = type(self.model)
        module = getattr(self.model, "model", None)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "hyperparameters": self.hyperparameters(),
            "loss": _callable_name(getattr(self.model, "loss", None)),
            "model_parameters": self.model_fingerprint(),
            "fit": _fit_fingerprint(self.model),
            "module": type(module).__qualname__ if module is not None else None,
        }

    def model_fingerprint(self) -> str:
        module = getattr(self.model, "model", None)
        if isinstance(module, torch.nn.Module):
            return model_fingerprint(module, buffers=True)
        return hashlib.sha256(repr(module).encode()).hexdigest()
