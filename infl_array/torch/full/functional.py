"""A torch model as a pure function of its flattened parameters.

:class:`FlatModel` snapshots the trainable parameters of an ``nn.Module`` into one flat
vector ``theta`` (frozen parameters and buffers are passed through unchanged) and evaluates,
with :mod:`torch.func`:

* the mean loss of a batch, ``L_b(theta) = loss(model(x_b), y_b)`` via ``functional_call``;
* per-sample gradients ``grad l(z_i)``, one row per sample, as ``vmap(grad(l))`` over the
  batch (no Python loop over samples);
* the batch Hessian ``jacrev(grad(L_b))`` for explicit methods;
* Hessian-matrix products ``H_b V`` for a whole block of vectors at once: one ``vjp`` of
  ``grad(L_b)`` at ``theta`` (the Hessian is symmetric, so ``v^T H = (H v)^T``) applied with
  ``vmap`` over the columns of ``V``.

Both are reverse-over-reverse: torch's forward-mode AD (``jvp``, ``jacfwd`` and thus
``torch.func.hessian``) emits a ``DeprecationWarning`` from ``torch.jit.script`` the first time
it loads its decompositions (torch 2.13), which would break callers running with warnings as
errors. The results are the same Hessian and products.

The weighting of batches into the Hessian of the mean loss over all fit data is done by the
callers (:mod:`infl_array.torch.full.base`).

Warnings once per cause: torch warns about every operation ``vmap`` has no batching rule for
("There is a performance drop because we have not yet implemented the batching rule for
..."), each time a warnings filter was changed in between (``warnings.catch_warnings``
resets the per-location record, and CPython's ``"once"`` filter with it), so one ``create``
printed it 4-12 times. The ``vmap`` passes here run in :func:`warn_once_per_cause`, which shows
each such warning once per process (other warnings as they come).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import grad, jacrev, vjp, vmap

from infl_array.torch.data.tokens import call_model, model_outputs
from infl_array.torch.data.views import tensor_buffer

__all__ = [
    "FlatModel",
    "LossFn",
    "model_fingerprint",
    "parameter_fingerprints",
    "warn_once_per_cause",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

VMAP_PERFORMANCE_WARNING = "There is a performance drop because we have not yet implemented"
"""The start of torch's warning about an operation without a batching rule under ``vmap``."""

_SHOWN: set[tuple[type[Warning], str]] = set()
_ONCE_LOCK = threading.RLock()


@contextmanager
def warn_once_per_cause() -> Iterator[None]:
    """Run a ``vmap`` pass showing each of torch's performance warnings once per process.

    The pass's warnings are recorded and shown again after it, in order; a warning whose text
    starts with :data:`VMAP_PERFORMANCE_WARNING` only the first time that text is seen. Passes
    are serialised by a lock: ``warnings.catch_warnings`` swaps process-wide state, which two
    threads recording at once would leave swapped.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with _ONCE_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            text = str(w.message)
            if text.startswith(VMAP_PERFORMANCE_WARNING):
                if (w.category, text) in _SHOWN:
                    continue
                _SHOWN.add((w.category, text))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def model_fingerprint(model: nn.Module, *, buffers: bool = False) -> str:
    """sha256 hex digest over parameter names, shapes, dtypes and values (CPU bytes).

    The one model fingerprint of the package: the backends' ``model_fingerprint`` (parameters)
    and a pyDVL model's (parameters and buffers, :mod:`~infl_array.torch.source.pydvl`).

    Parameters
    ----------
    model : torch.nn.Module
        The model; all its parameters (trainable or not) are hashed in registration order.
    buffers : bool
        Hash its buffers too (running statistics, say), after the parameters.

    Returns
    -------
    str
        Equal for equal models held in different objects; changes when any value changes.
    """
    h = hashlib.sha256()
    tensors: list[tuple[str, Iterator[tuple[str, torch.Tensor]]]] = [("", model.named_parameters())]
    if buffers:
        tensors.append(("buffer ", model.named_buffers()))
    for kind, named in tensors:
        for name, t in named:
            h.update(f"{kind}{name};{tuple(t.shape)};{t.dtype};".encode())
            h.update(tensor_buffer(t))
    return h.hexdigest()


def parameter_fingerprints(model: nn.Module) -> dict[str, str]:
    """``{name: digest}``: a short sha256 (16 hex digits) of each parameter's shape and values.

    Parameters
    ----------
    model : torch.nn.Module
        The model; all its parameters (trainable or not).

    Returns
    -------
    dict of str to str
        Which parameters differ between two versions of a model, where
        :func:`model_fingerprint` only says that some do.
    """
    out = {}
    for name, p in model.named_parameters():
        h = hashlib.sha256(f"{tuple(p.shape)};{p.dtype};".encode())
        h.update(tensor_buffer(p))
        out[name] = h.hexdigest()[:16]
    return out


class FlatModel:
    """Model and loss as functions of a flat parameter vector.

    Parameters
    ----------
    model : torch.nn.Module
        The model. Its trainable parameters are copied (detached) at construction; later
        changes to the module do not affect this object.
    loss : callable
        ``loss(outputs, targets)`` reducing by mean over the batch.

    Attributes
    ----------
    theta : torch.Tensor
        Flat copy of the trainable parameters, shape ``(n_params,)``.
    """

    def __init__(
        self, model: nn.Module, loss: LossFn, input_keys: tuple[str, ...] | None = None
    ) -> None:
        self.model = model
        self.loss = loss
        self.input_keys = input_keys
        """Keys of inputs packed from mappings (the model is called with them), or None."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters (requires_grad=True); "
                "influence is taken with respect to trainable parameters."
            )
        dtypes = {p.dtype for _, p in trainable}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(
                "trainable parameters must share one floating dtype, got "
                f"{sorted(map(str, dtypes))}; convert the model with model.double() or "
                "model.float()."
            )
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.numels = [p.numel() for _, p in trainable]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in trainable]).clone()
        self.const: dict[str, torch.Tensor] = {
            n: p.detach() for n, p in model.named_parameters() if not p.requires_grad
        }
        self.const.update({n: b.detach() for n, b in model.named_buffers()})
        self.graph_bytes: int | None = None
        """Bytes the autograd graph of one sample's loss saves (:meth:`measure_graph`)."""

    def measure_graph(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Bytes the autograd graph of the loss of the one-sample batch ``(x, y)`` saves for
        its backward pass (activations and the like), measured once and kept in
        :attr:`graph_bytes`: the unit the passes over data are accounted in (the backends'
        memory budget)."""
        if self.graph_bytes is None:
            saved = [0]

            def pack(t: torch.Tensor) -> torch.Tensor:
                saved[0] += t.numel() * t.element_size()
                return t

            theta = self.theta.detach().requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self.batch_loss(theta, x, y)
            self.graph_bytes = max(1, saved[0])
        return self.graph_bytes

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return int(self.theta.numel())

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.theta.device

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into the named parameter tensors."""
        parts = torch.split(theta, self.numels)
        return {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for the batch ``x`` at the snapshot parameters (an output object's
        ``logits``, :func:`~infl_array.torch.data.tokens.model_outputs`)."""
        params = (self.unflatten(self.theta), self.const)
        return model_outputs(call_model(self.model, params, x, self.input_keys))

    def batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of the batch ``(x, y)`` at parameters ``theta`` (a scalar)."""
        params = (self.unflatten(theta), self.const)
        out = call_model(self.model, params, x, self.input_keys)
        return self.loss(model_outputs(out), y)

    def per_sample_grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradients of the loss of each sample, shape ``(n, n_params)``."""

        def sample_loss(theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.batch_loss(theta, xi.unsqueeze(0), yi.unsqueeze(0))

        with warn_once_per_cause():
            return vmap(grad(sample_loss), in_dims=(None, 0, 0))(self.theta, x, y)

    def batch_hessian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hessian of the mean batch loss, shape ``(n_params, n_params)``."""
        h = jacrev(grad(self.batch_loss))(self.theta, x, y)
        return (h + h.T) / 2  # exact symmetry (reverse-over-reverse rounding differs by ~eps)

    def batch_hvp(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hessian of the mean batch loss times the columns of ``v`` (``(n_params, m)``).

        All columns are computed in one vectorised pass: one forward/backward graph of the
        gradient, then ``vmap`` of its vector-Jacobian product over the columns.
        """
        vjp_fn = vjp(lambda th: grad(self.batch_loss)(th, x, y), self.theta)[1]
        with warn_once_per_cause():
            (hv,) = vmap(vjp_fn, in_dims=1, out_dims=1)(v)
        return hv


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """Raise a clear error when ``t`` holds NaN or inf; return it unchanged otherwise.

    A finite sum proves every entry finite (NaN and inf propagate through it) at a fraction of
    the cost of ``isfinite(t).all()``; only a sum that is not finite (an overflow or a bad
    entry) is checked entry by entry.
    """
    if bool(torch.isfinite(t.sum())):
        return t
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise FloatingPointError(
            f"{what} contains {bad} non-finite values (NaN or inf); check the model's outputs "
            "and loss on this data, and the regularization."
        )
    return t


def nonnegative(value: object, name: str) -> float:
    """Validate a finite non-negative real number (e.g. a regularization or tolerance)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}; pass e.g. {name}=0.0.")
    return float(value)
