"""Per-layer capture: the inputs and output gradients of a model's Linear and Conv2d layers.

The per-layer backends (:mod:`~infl_array.torch.layerwise.ekfac`,
:mod:`~infl_array.torch.layerwise.projected`) never form a gradient of all parameters. They work on
the layers this module finds and captures:

* **Layers.** :func:`find_layers` lists every ``nn.Linear`` and ``nn.Conv2d`` whose weight is
  trainable (``requires_grad``), with its bias when that is present and trainable. Every other
  parameter (embeddings, normalisation layers, ``nn.Conv1d``, frozen layers, ...) is left out:
  influence is computed with respect to the weights and biases of the layers found only
  (:attr:`LayerSpec.parameter_names` names them). A grouped convolution, or a layer whose
  bias is trainable while its weight is frozen, is refused; freeze it
  (``layer.requires_grad_(False)``) to leave it out.
* **Layout.** A layer's gradient is a ``(d_out, width_in)`` matrix: the weight flattened to
  ``(d_out, d_in)`` (a Conv2d weight ``(C_out, C_in, kh, kw)`` as ``(C_out, C_in*kh*kw)``, the
  order of :func:`torch.nn.functional.unfold`), then the bias as one more column.
* **Positions.** A Linear layer applied to ``(n, *, d_in)`` sees ``prod(*)`` positions per
  sample; a Conv2d sees one position per output pixel, its input being the unfolded patch
  (zero padding, ``padding="same"`` and the non-zero ``padding_mode``s are applied as the layer
  applies them). A layer called several times in one forward pass (shared weights) contributes
  the positions of every call. The per-sample gradient of a layer is the sum over positions:
  ``grad_W l_i = sum_t g_{i,t} a_{i,t}^T`` with ``a`` the (bias-augmented) input and ``g`` the
  gradient of the per-sample loss with respect to the layer's output at that position.
* **One pass.** :func:`capture` runs one forward pass with forward hooks that record each
  layer's input and output (the model continues with a copy of the output, so later in-place
  operations cannot change what was recorded), then one ``torch.autograd.grad`` of the
  objective with respect to the recorded outputs. No parameter gradient is computed and no
  ``.grad`` is touched.
* **Per-sample loss.** Influence uses the per-sample terms of the mean training loss:
  :func:`loss_objective` returns ``n * loss(outputs, y)``, whose gradient with respect to
  sample ``i``'s outputs is that of ``l_i = loss(outputs[i:i+1], y[i:i+1])`` when ``loss``
  reduces by mean over the batch (as ``torch.nn.functional.cross_entropy`` does);
  :func:`check_mean_reduction` refuses a loss that does not. :func:`pydvl_objective` is the
  label-free pseudo-loss pyDVL 0.10's ``EkfacInfluence`` uses for its curvature factors.
* **Mode.** A model in training mode with dropout or batch normalisation is refused
  (:func:`check_deterministic`): its outputs would be random or depend on the batch, and the
  forward passes would update running statistics. Call ``model.eval()`` first.
* **Memory.** :class:`MemoryBudgetError` (a ``MemoryError``) is raised, before allocating,
  when something would exceed the caller's memory budget; :func:`sample_chunks` splits a batch
  so that per-sample temporaries stay within it.

Everything stays on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from infl_array.errors import format_bytes

__all__ = [
    "LayerRecord",
    "LayerSpec",
    "MemoryBudgetError",
    "capture",
    "check_budget",
    "check_deterministic",
    "check_mean_reduction",
    "find_layers",
    "layer_gradients",
    "loss_objective",
    "pydvl_objective",
    "sample_chunks",
]

Objective = Callable[[torch.Tensor], torch.Tensor]


class MemoryBudgetError(MemoryError):
    """An allocation the caller asked for would exceed the memory budget."""


def check_budget(nbytes: int, budget: int, what: str, fix: str) -> None:
    """Raise :class:`MemoryBudgetError` when ``nbytes`` exceeds ``budget``.

    Parameters
    ----------
    nbytes : int
        Bytes the allocation needs.
    budget : int
        The memory budget in bytes.
    what : str
        What would be allocated (with its shape), for the message.
    fix : str
        How to make it fit, for the message.
    """
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(nbytes)}, more than the memory budget of "
            f"{format_bytes(budget)}; {fix}"
        )


def sample_chunks(n: int, bytes_per_sample: int, budget: int, what: str) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose temporaries fit ``budget``.

    Raises :class:`MemoryBudgetError` when even one sample does not fit.
    """
    check_budget(
        bytes_per_sample,
        budget,
        f"{what} for one sample",
        "raise memory_budget, or leave the largest layers out by freezing them "
        "(layer.requires_grad_(False)).",
    )
    step = max(1, budget // max(1, bytes_per_sample))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


# --------------------------------------------------------------------------- layers
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class LayerSpec:
    """A Linear or Conv2d layer whose weight (and bias) influence is taken with respect to.

    Attributes
    ----------
    name : str
        The module's qualified name in the model (``""`` for the model itself).
    module : torch.nn.Module
        The ``nn.Linear`` or ``nn.Conv2d``.
    d_in : int
        Inputs per position: ``in_features``, or ``C_in * kh * kw`` for a convolution.
    d_out : int
        Outputs per position: ``out_features`` or ``C_out``.
    has_bias : bool
        Whether the bias is included (present and trainable).
    """

    name: str
    module: nn.Module = field(compare=False, repr=False)
    d_in: int
    d_out: int
    has_bias: bool

    @property
    def kind(self) -> str:
        """``"linear"`` or ``"conv2d"``."""
        return "conv2d" if isinstance(self.module, nn.Conv2d) else "linear"

    @property
    def width_in(self) -> int:
        """Columns of the gradient matrix: ``d_in`` plus one for the bias."""
        return self.d_in + int(self.has_bias)

    @property
    def n_params(self) -> int:
        """Parameters of the layer that are included: ``d_out * width_in``."""
        return self.d_out * self.width_in

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Qualified names of the included parameters (weight, then bias)."""
        prefix = f"{self.name}." if self.name else ""
        names = (f"{prefix}weight",)
        return (*names, f"{prefix}bias") if self.has_bias else names

    # ----------------------------------------------------------------- per-call views
    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Conv input padded as the layer pads it, and the zero padding left to apply."""
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            pads: list[int] = []
            for dim in (1, 0):  # F.pad wants (left, right, top, bottom)
                if conv.padding == "valid":
                    lo = hi = 0
                elif conv.padding == "same":
                    total = conv.dilation[dim] * (conv.kernel_size[dim] - 1)
                    lo, hi = total // 2, total - total // 2
                else:
                    lo = hi = int(conv.padding[dim])
                pads += [lo, hi]
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            return F.pad(x, pads, mode=mode), (0, 0)
        return x, (int(conv.padding[0]), int(conv.padding[1]))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """The padded input's patches as a strided view, ``(n, H_out, W_out, C_in, kh, kw)``.

        The same numbers as :func:`torch.nn.functional.unfold` (a copy, and slow on CPU with
        several threads), without copying.
        """
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        xp, (p_h, p_w) = self._padded(x)
        if p_h or p_w:
            xp = F.pad(xp, (p_w, p_w, p_h, p_h))
        for dim, axis in ((0, 2), (1, 3)):
            span = conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
            xp = xp.unfold(axis, span, conv.stride[dim])  # window appended as the last axis
        d_h, d_w = conv.dilation
        return xp[..., ::d_h, ::d_w].permute(0, 2, 3, 1, 4, 5)

    def _check_input(self, x: torch.Tensor) -> None:
        if self.kind == "conv2d" and x.ndim != 4:
            raise ValueError(
                f"Conv2d layer {self.name!r} got an input of shape {tuple(x.shape)}; per-layer "
                "capture needs batched (n, C, H, W) inputs."
            )
        if self.kind == "linear" and x.ndim < 2:
            raise ValueError(
                f"Linear layer {self.name!r} got an input of shape {tuple(x.shape)}; per-layer "
                "capture needs a leading sample dimension, (n, ..., in_features)."
            )

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """One call's input as bias-augmented activations, ``(n, T, width_in)``."""
        self._check_input(x)
        n = x.shape[0]
        if self.kind == "linear":
            a = x.reshape(n, -1, self.d_in)
            if not self.has_bias:
                return a
            out = a.new_empty((*a.shape[:2], self.width_in))
            out[..., : self.d_in] = a
        else:
            patches = self._patches(x)
            n, h, w = patches.shape[:3]
            out = x.new_empty((n, h * w, self.width_in))
            out[..., : self.d_in].unflatten(2, patches.shape[3:]).unflatten(1, (h, w)).copy_(
                patches
            )
        if self.has_bias:
            out[..., self.d_in] = 1
        return out

    def project_activations(self, x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """``proj @ a_t`` at every position of one call, ``(n, T, k)``; ``proj``: ``(k, width_in)``.

        For a convolution this is itself a convolution with ``k`` filters (no unfolded patches).
        """
        self._check_input(x)
        if self.kind == "linear":
            weight = proj[:, : self.d_in]
            out = x.reshape(x.shape[0], -1, self.d_in) @ weight.T
        else:
            conv = self.module
            assert isinstance(conv, nn.Conv2d)
            xp, pad = self._padded(x)
            filters = proj[:, : self.d_in].reshape(proj.shape[0], *conv.weight.shape[1:])
            y = F.conv2d(xp, filters, None, conv.stride, pad, conv.dilation)
            out = y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2)
        if self.has_bias:
            out = out + proj[:, self.d_in]
        return out

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """One call's output gradient per position, ``(n, T, d_out)``."""
        n = g.shape[0]
        if self.kind == "linear":
            return g.reshape(n, -1, self.d_out)
        return g.reshape(n, self.d_out, -1).transpose(1, 2)


def _describe(module: nn.Module) -> str:
    return type(module).__name__


def find_layers(model: nn.Module) -> tuple[list[LayerSpec], list[str]]:
    """The trainable Linear and Conv2d layers of ``model``, and the parameters left out.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    layers : list of LayerSpec
        In ``named_modules`` order.
    excluded : list of str
        Names of trainable parameters that belong to no included layer (left out).

    Raises
    ------
    ValueError
        If no trainable Linear or Conv2d layer exists, or a layer is configured in a way the
        per-layer backends do not support (grouped convolution, trainable bias with a frozen
        weight).
    """
    layers: list[LayerSpec] = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight, bias = module.weight, module.bias
        if not weight.requires_grad:
            if bias is not None and bias.requires_grad:
                raise ValueError(
                    f"layer {name!r} ({_describe(module)}) has a trainable bias but a frozen "
                    "weight; per-layer backends take a layer whole. Freeze the bias too "
                    f"(model.get_submodule({name!r}).bias.requires_grad_(False)) to leave the "
                    "layer out, or unfreeze the weight."
                )
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(
                    f"Conv2d layer {name!r} has groups={module.groups}; per-layer backends "
                    "support groups=1 only. Leave it out by freezing it "
                    f"(model.get_submodule({name!r}).requires_grad_(False))."
                )
            d_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            d_out = module.out_channels
        else:
            d_in, d_out = module.in_features, module.out_features
        spec = LayerSpec(
            name, module, d_in, d_out, has_bias=bias is not None and bias.requires_grad
        )
        layers.append(spec)
        covered.update(spec.parameter_names)
    excluded = [n for n, p in model.named_parameters() if p.requires_grad and n not in covered]
    if not layers:
        found = sorted(
            {_describe(m) for m in model.modules() if any(True for _ in m.parameters(False))}
        )
        raise ValueError(
            f"{type(model).__name__} has no trainable nn.Linear or nn.Conv2d layer (modules with "
            f"parameters: {', '.join(found) or 'none'}); per-layer backends (EkfacInfluence, "
            "ProjectedInfluence) support only these two layer types. Use CgInfluence, "
            "LissaInfluence or ArnoldiInfluence for other models."
        )
    return layers, excluded


def check_deterministic(model: nn.Module) -> None:
    """Refuse a model in training mode with dropout or batch normalisation."""
    for name, module in model.named_modules():
        if module.training and isinstance(module, _STOCHASTIC):
            raise ValueError(
                f"{type(model).__name__} is in training mode and its module {name!r} "
                f"({_describe(module)}) is random or batch-dependent there; influence needs the "
                "deterministic model (and must not update running statistics). Call "
                "model.eval() first."
            )


# --------------------------------------------------------------------------- objectives
def loss_objective(loss: Callable[..., torch.Tensor], y: torch.Tensor) -> Objective:
    """``outputs -> n * loss(outputs, y)``: the sum of the per-sample terms of the mean loss."""

    def objective(outputs: torch.Tensor) -> torch.Tensor:
        value = loss(outputs, y)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"loss(outputs, targets) must return a scalar tensor (the mean over the batch), "
                f"got {shape}; use reduction='mean'."
            )
        return value * outputs.shape[0]

    return objective


def pydvl_objective(outputs: torch.Tensor) -> torch.Tensor:
    """pyDVL 0.10's label-free curvature pseudo-loss for softmax classifiers.

    ``sum_i sum_c sqrt(p_ic) log p_ic`` with ``p = softmax(outputs, dim=1)`` and ``sqrt(p)``
    held constant (``pydvl.influence.torch.util.empirical_cross_entropy_loss_fn``). Its
    gradient for sample ``i`` with respect to the logits is ``sqrt(p_i) - p_i sum_c
    sqrt(p_ic)``, whose outer product is pyDVL's estimate of the Fisher.
    """
    if outputs.ndim < 2:
        raise ValueError(
            f"fisher_type='pydvl' needs class scores of shape (n, n_classes, ...), got model "
            f"outputs of shape {tuple(outputs.shape)}; pass fisher_type='empirical'."
        )
    probs = torch.softmax(outputs, dim=1)
    log_probs = torch.log(probs)
    log_probs = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    return torch.sum(log_probs * probs.detach() ** 0.5)


def check_mean_reduction(
    loss: Callable[..., torch.Tensor], outputs: torch.Tensor, y: torch.Tensor
) -> None:
    """Refuse a loss whose batch value is not the mean of its per-sample values.

    Compares ``loss`` on the first two samples with the mean of its values on each (only the
    loss is evaluated, not the model).
    """
    if outputs.shape[0] < 2:
        return
    with torch.no_grad():
        pair = loss(outputs[:2], y[:2])
        single = (loss(outputs[:1], y[:1]) + loss(outputs[1:2], y[1:2])) / 2
    if pair.ndim != 0 or not torch.allclose(pair, single, rtol=1e-4, atol=1e-8):
        raise ValueError(
            "loss(outputs, targets) must reduce by mean over the samples of the batch (as "
            "torch.nn.functional.cross_entropy does), so that n * loss is the sum of the "
            f"per-sample losses; on two samples it gave {pair.tolist()} but the mean of their "
            f"losses is {single.item()}. Use reduction='mean'."
        )


# --------------------------------------------------------------------------- capture
@dataclass
class LayerRecord:
    """What one forward and backward pass recorded for one layer.

    Attributes
    ----------
    spec : LayerSpec
        The layer.
    inputs : list of torch.Tensor
        The layer's input of each call (detached).
    grads : list of torch.Tensor
        The objective's gradient with respect to the layer's output of each call.
    """

    spec: LayerSpec
    inputs: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Samples in the batch."""
        return int(self.inputs[0].shape[0])

    def activations(self, rows: slice = slice(None)) -> torch.Tensor:
        """Bias-augmented inputs at every position of every call, ``(n, T, width_in)``."""
        parts = [self.spec.activations(x[rows]) for x in self.inputs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def output_grads(self, rows: slice = slice(None)) -> torch.Tensor:
        """Output gradients at every position of every call, ``(n, T, d_out)``."""
        return torch.cat([self.spec.output_grads(g[rows]) for g in self.grads], dim=1)

    def projected_activations(self, proj: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``proj @ a`` at every position, ``(n, T, k)``."""
        return torch.cat([self.spec.project_activations(x[rows], proj) for x in self.inputs], 1)

    @property
    def positions(self) -> int:
        """Positions per sample over all calls."""
        return sum(int(g[:1].numel()) // self.spec.d_out for g in self.grads)

    def per_sample_grads(self, rows: slice = slice(None)) -> torch.Tensor:
        """Per-sample gradients of the layer, ``(n, d_out, width_in)`` (sum over positions)."""
        return self.output_grads(rows).transpose(1, 2) @ self.activations(rows)


def capture(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    x: torch.Tensor,
    objective: Objective,
    params: dict[str, torch.Tensor] | None = None,
) -> list[LayerRecord]:
    """One forward and one backward pass; the inputs and output gradients of ``layers``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (in the mode it is in; see :func:`check_deterministic`).
    layers : sequence of LayerSpec
        The layers to record (from :func:`find_layers`).
    x : torch.Tensor
        A batch of inputs, ``(n, ...)``, on the model's device.
    objective : callable
        ``objective(outputs) -> scalar`` whose gradient is recorded (e.g.
        :func:`loss_objective`).
    params : dict of str to torch.Tensor, optional
        Parameter and buffer values to evaluate the model at
        (:func:`torch.func.functional_call`); the module's own by default. Trainable values
        must require grad so that the layer outputs are part of the autograd graph.

    Returns
    -------
    list of LayerRecord
        One per layer, in the order of ``layers``.

    Raises
    ------
    ValueError
        If a layer was not called by ``model.forward``, or saw an input whose first dimension
        is not the batch size.
    """
    records = [LayerRecord(spec) for spec in layers]
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]

    def make_hook(i: int) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor):
            records[i].inputs.append(args[0].detach())
            outputs[i].append(out)
            return out.clone()  # later in-place operations change the copy, not `out`

        return hook

    handles = [spec.module.register_forward_hook(make_hook(i)) for i, spec in enumerate(layers)]
    try:
        with torch.enable_grad():
            out = model(x) if params is None else functional_call(model, params, (x,))
            value = objective(out)
            flat = [o for outs in outputs for o in outs]
            missing = [spec.name for spec, outs in zip(layers, outputs, strict=True) if not outs]
            if missing:
                raise ValueError(
                    f"layers {missing} have trainable parameters but were not called by "
                    f"{type(model).__name__}.forward (their weights are used some other way, "
                    "e.g. inside nn.MultiheadAttention); per-layer backends need each layer "
                    "called as a module. Leave them out by freezing them "
                    "(layer.requires_grad_(False))."
                )
            grads = torch.autograd.grad(value, flat, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    n = x.shape[0]
    it = iter(grads)
    for rec, outs in zip(records, outputs, strict=True):
        for out, inp in zip(outs, rec.inputs, strict=True):
            g = next(it)
            if inp.shape[0] != n or out.shape[0] != n:
                raise ValueError(
                    f"layer {rec.spec.name!r} saw an input of shape {tuple(inp.shape)} for a "
                    f"batch of {n} samples; per-sample capture needs the samples along the "
                    "first dimension of every layer's input and output."
                )
            rec.grads.append(torch.zeros_like(out) if g is None else g.detach())
    return records


def layer_gradients(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Per-sample loss gradients of the layers' parameters, ``(n, sum of n_params)``.

    Each layer's block is its ``(d_out, width_in)`` gradient flattened row-major (weight
    columns, then the bias column), layers in the order given.
    """
    records = capture(model, layers, x, loss_objective(loss, y))
    return torch.cat([rec.per_sample_grads().flatten(1) for rec in records], dim=1)
