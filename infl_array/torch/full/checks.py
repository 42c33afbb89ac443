"""Checks of a model and of data before any influence is computed.

Influence functions take gradients and curvature of a deterministic function of the
parameters, one sample at a time (``torch.func.vmap`` over samples). Two kinds of mistakes
otherwise surface deep inside torch, long after the work started:

* **a model in training mode** (:func:`require_eval_mode`). Modules whose behaviour differs
  between ``train()`` and ``eval()`` make the influence meaningless or fail: dropout draws random
  masks (``vmap`` refuses random operations: "vmap: called random operation ..."), batch and
  instance normalisation with running statistics normalise by the statistics of the batch and
  update their buffers in place (refused inside gradient transforms). Such modules in training
  mode are refused with a :class:`ValueError` naming them and the fix (``model.eval()``); the
  model is never switched silently, since it belongs to the caller. Detected: the dropout family
  (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``), ``RReLU``, and
  every module with running statistics (``track_running_stats=True``: ``BatchNorm*``,
  ``SyncBatchNorm``, ``InstanceNorm*`` with running statistics, their lazy forms). Other modules
  (``Linear``, ``ReLU``, ``LayerNorm``, ...) behave the same in both modes and may stay in
  training mode. A custom module that reads ``self.training`` is not recognised; if it draws
  random numbers, :func:`check_sample` reports it with the same fix.
* **data the model or the loss cannot take** (:func:`check_sample`), checked on the first two
  samples (one for the gradient): the forward pass (feature count, input dtype), the loss (label
  shape and dtype, a scalar mean reduction, target-size warnings that would broadcast) and one
  per-sample gradient under ``vmap``. Each failure raises :class:`ValueError` or
  :class:`TypeError` saying what was expected, what came, and the fix (for label problems, the
  conversion that makes the loss work, found by trying it).

Integer labels of any width (``int32``, ``uint8``, ...) are not an error: the backends convert
integer targets to ``int64`` (torch's index type) before calling the loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from infl_array.torch.data.tokens import split_mapping
from infl_array.torch.data.views import numpy_to_tensor
from infl_array.torch.full.functional import FlatModel, LossFn

__all__ = [
    "MODE_DEPENDENT",
    "check_sample",
    "mode_dependent_modules",
    "model_inputs",
    "require_eval_mode",
]

MODE_DEPENDENT: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.RReLU,
)
"""Random modules in training mode (modules with running statistics are detected too)."""


def _has_running_stats(module: nn.Module) -> bool:
    return bool(getattr(module, "track_running_stats", False)) and (
        getattr(module, "running_mean", None) is not None
        or getattr(module, "running_var", None) is not None
    )


def mode_dependent_modules(model: nn.Module) -> list[tuple[str, str]]:
    """Modules in training mode whose behaviour differs from evaluation mode.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    list of (str, str)
        ``(qualified name, class name)`` of each such module (``""`` names the model itself).

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.BatchNorm1d(4))
    >>> mode_dependent_modules(model)
    [('1', 'Dropout'), ('2', 'BatchNorm1d')]
    >>> mode_dependent_modules(model.eval())
    []
    """
    return [
        (name, type(module).__name__)
        for name, module in model.named_modules()
        if module.training and (isinstance(module, MODE_DEPENDENT) or _has_running_stats(module))
    ]


def require_eval_mode(model: nn.Module, who: str) -> None:
    """Raise :class:`ValueError` when :func:`mode_dependent_modules` finds any.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    who : str
        The caller, for the message (e.g. ``"DirectInfluence"``).
    """
    found = mode_dependent_modules(model)
    if not found:
        return
    listed = ", ".join(f"{name or '<model>'!r} ({cls})" for name, cls in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    raise ValueError(
        f"{who} needs the model in evaluation mode, but {type(model).__name__} has modules in "
        f"training mode that behave differently there: {listed}{more}. In training mode dropout "
        "draws random masks and batch normalisation uses (and updates) batch statistics, so "
        "influence values would be random or wrong. Call model.eval() before fit (and before "
        "creating or opening an array with it)."
    )


def model_inputs(
    flat: FlatModel, x: Any, y: Any, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``, ``y`` as tensors on the model's device: floats in the model's dtype, integer
    targets as ``int64``; only the first ``limit`` samples when given.

    ``x`` may be a mapping of model inputs when the model was fitted on such samples (packed
    as the fit data were, :func:`~infl_array.torch.data.tokens.split_mapping`).

    Raises
    ------
    TypeError
        For inputs that are neither torch tensors nor numpy arrays.
    ValueError
        When ``x`` and ``y`` lack a common leading sample dimension.
    """
    if isinstance(x, Mapping):
        if flat.input_keys is None:
            raise TypeError(
                f"x is a mapping (keys {sorted(x)}) but the model was fitted on tensors; pass "
                "x as fitted, or fit on mappings of model inputs."
            )
        x = split_mapping(x, flat.input_keys, "x")[0]
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"{name} must be a torch tensor or numpy array, got {type(a).__name__}; convert "
                "it with torch.as_tensor or np.asarray."
            )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y need the same leading sample dimension, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}; pass one target per sample."
        )
    out = []
    for name, a in (("x", x), ("y", y)):
        t = numpy_to_tensor(a[:limit]) if isinstance(a, np.ndarray) else a[:limit]
        if t.is_floating_point():
            dtype = flat.dtype
        elif name == "y" and not t.is_complex() and t.dtype != torch.bool:
            dtype = torch.int64  # class labels of any integer width: torch's index type
        else:
            dtype = t.dtype
        out.append(t.to(device=flat.device, dtype=dtype))
    return out[0], out[1]


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
            return name, module
    return None


def _input_hint(model: nn.Module, x: torch.Tensor, what: str, dtype: torch.dtype) -> str:
    """What the model seems to expect of ``x`` (one sentence), or a generic fix."""
    if not x.is_floating_point() and not x.is_complex():
        layer = _first_layer(model)
        if layer is None or not isinstance(layer[1], nn.Embedding):
            return (
                f" {what} x has dtype {x.dtype} but the model computes in {dtype}: convert x "
                "as in training (e.g. x.float() / 255 for uint8 images)."
            )
    layer = _first_layer(model)
    shape = tuple(x.shape[1:])
    if layer is not None:
        name, module = layer
        if isinstance(module, nn.Linear) and x.ndim >= 2 and x.shape[-1] != module.in_features:
            return (
                f" The model's first layer ({name!r}, Linear) expects {module.in_features} "
                f"features per sample; {what} has {x.shape[-1]} (samples of shape {shape}). "
                f"Pass {what} data with the features the model was trained on."
            )
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            want = module.in_channels
            if x.ndim >= 2 and x.shape[1] != want:
                return (
                    f" The model's first layer ({name!r}, {type(module).__name__}) expects "
                    f"{want} input channels (dimension 1); {what} has {x.shape[1]} (samples of "
                    f"shape {shape}). Pass {what} data shaped as in training."
                )
    return f" {what} samples have shape {shape}; pass {what} data shaped as in training."


def _loss_candidates(out: torch.Tensor, y: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Conversions of the targets that commonly make a loss work, with their spelling."""
    cands: list[tuple[str, torch.Tensor]] = []
    if y.ndim >= 2 and y.shape[-1] == 1:
        cands.append(("y.squeeze(-1)", y.squeeze(-1)))
    if y.ndim == out.ndim - 1 and out.shape[-1] == 1:
        cands.append(("y.unsqueeze(-1)", y.unsqueeze(-1)))
    if y.is_floating_point():
        cands.append(("y.long()", y.long()))
        if y.ndim >= 2 and y.shape[-1] == 1:
            cands.append(("y.squeeze(-1).long()", y.squeeze(-1).long()))
    elif not y.is_complex() and out.is_floating_point():
        cands.append((f"y.to({out.dtype})", y.to(out.dtype)))
    return cands


def _loss_value(loss: LossFn, out: torch.Tensor, y: torch.Tensor) -> tuple[Any, list[str]]:
    """``loss(out, y)`` and the texts of the warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = loss(out, y)
    return value, [str(w.message) for w in caught]


def _working_fix(loss: LossFn, out: torch.Tensor, y: torch.Tensor) -> str:
    for spelling, candidate in _loss_candidates(out, y):
        try:
            value, warned = _loss_value(loss, out, candidate)
        except Exception:  # a candidate that fails too is simply not suggested
            continue
        if not warned and isinstance(value, torch.Tensor) and value.ndim == 0:
            return f" Pass {spelling} (the loss works on it)."
    return " Pass targets in the form the loss was trained with."


def _per_n(shape: tuple[int, ...]) -> str:
    """A batch shape with its sample dimension written ``n``: ``(n, 3)``, ``(n,)``."""
    rest = "".join(f", {d}" for d in shape[1:])
    return f"(n{rest})" if rest else "(n,)"


def _sample_desc(name: str, t: torch.Tensor) -> str:
    return f"{name} of shape {_per_n(tuple(t.shape))} and dtype {t.dtype}"


def check_sample(
    flat: FlatModel,
    loss_name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    what: str,
    who: str,
    gradient: Callable[[torch.Tensor, torch.Tensor], object] | None = None,
) -> None:
    """Run the first samples of ``(x, y)`` through the model, the loss and one gradient.

    Parameters
    ----------
    flat : FlatModel
        The model and loss as functions of the parameters.
    loss_name : str
        Name of the loss, for messages.
    x, y : torch.Tensor
        One or two samples, already on the model's device and in its dtype.
    what : str
        Which data (``"train"``, ``"test"``), for messages.
    who : str
        The caller, for messages.
    gradient : callable, optional
        ``gradient(x, y)`` on the first sample: how the caller takes gradients (the per-layer
        backends' capture pass). Default: one per-sample gradient under ``torch.func.vmap``
        (the full-parameter backends' way); torch's warnings about missing batching rules are
        not errors here.

    Raises
    ------
    ValueError, TypeError
        See the module docstring.
    """
    out = _forward(flat, x, what, who)
    _check_loss(flat.loss, loss_name, out, y, what, who)
    _check_gradient(flat, x, y, what, who, gradient)


def _forward(flat: FlatModel, x: torch.Tensor, what: str, who: str) -> torch.Tensor:
    """The model's outputs on ``x`` (an output object's logits), or the error that says why not."""
    try:
        with torch.no_grad():
            return flat.forward(x)
    except Exception as exc:
        hint = _input_hint(flat.model, x, what, flat.dtype)
        kind = TypeError if "dtype" in hint else ValueError
        raise kind(
            f"{who}: running the first {what} samples ({_sample_desc('x', x)}) through "
            f"{type(flat.model).__name__} failed with {type(exc).__name__}: {exc}.{hint}"
        ) from exc


def _check_loss(
    loss: LossFn, loss_name: str, out: torch.Tensor, y: torch.Tensor, what: str, who: str
) -> None:
    """Refuse a loss that fails, warns, or does not reduce to the mean on the outputs ``out``."""
    got = f"{_sample_desc('y', y)} for model outputs of shape {_per_n(tuple(out.shape))}"
    try:
        with torch.no_grad():
            value, warned = _loss_value(loss, out, y)
    except Exception as exc:
        raise ValueError(
            f"{who}: the loss {loss_name} failed on the first {what} samples ({got}) with "
            f"{type(exc).__name__}: {exc}.{_working_fix(loss, out, y)}"
        ) from exc
    if warned:
        raise ValueError(
            f"{who}: the loss {loss_name} warned on the first {what} samples ({got}): {warned[0]} "
            f"Influence would be computed from a broadcast loss.{_working_fix(loss, out, y)}"
        )
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{who}: loss(outputs, targets) must reduce to a scalar (the mean over the batch), "
            f"got {shape} from {loss_name}; use reduction='mean'."
        )
    _check_mean(loss, loss_name, out, y, who)


def _check_gradient(
    flat: FlatModel,
    x: torch.Tensor,
    y: torch.Tensor,
    what: str,
    who: str,
    gradient: Callable[[torch.Tensor, torch.Tensor], object] | None,
) -> None:
    """One sample's gradient, the caller's way (``gradient``) or per-sample under ``vmap``."""
    if gradient is not None:
        try:
            gradient(x[:1], y[:1])
        except Exception as exc:
            raise ValueError(
                f"{who}: the gradient pass over one {what} sample failed with "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}."
            ) from exc
        return
    try:
        with warnings.catch_warnings():  # vmap's performance warnings are not failures
            warnings.filterwarnings("ignore", message=r".*(batching rule|vmap).*")
            flat.per_sample_grads(x[:1], y[:1])
    except Exception as exc:
        raise ValueError(
            f"{who}: the per-sample gradient of one {what} sample (torch.func.vmap over "
            f"torch.func.grad) failed with {type(exc).__name__}: {exc}. {who} takes per-sample "
            "gradients under vmap, which cannot run random operations (call model.eval() for "
            "dropout), in-place updates of buffers, .item() or Python branching on tensor "
            "values inside the model or the loss. The per-layer backends (EkfacInfluence, "
            "ProjectedInfluence) take gradients without vmap and accept such models."
        ) from exc


def _check_mean(loss: LossFn, loss_name: str, out: torch.Tensor, y: torch.Tensor, who: str) -> None:
    """Refuse a loss whose value on two samples is not the mean of its values on each."""
    if out.shape[0] < 2:
        return
    with torch.no_grad():
        pair = loss(out[:2], y[:2])
        single = (loss(out[:1], y[:1]) + loss(out[1:2], y[1:2])) / 2
    if not torch.allclose(pair, single, rtol=1e-4, atol=1e-8):
        raise ValueError(
            f"{who}: loss(outputs, targets) must be the MEAN over the samples of the batch (as "
            f"torch.nn.functional.cross_entropy is); {loss_name} gave {pair.item():.6g} on two "
            f"samples whose losses average {single.item():.6g}. Use reduction='mean'."
        )
