"""Per-layer capture: the inputs and output gradients of a model's layers.

The per-layer backends (:mod:`~infl_array.torch.layerwise.ekfac`,
:mod:`~infl_array.torch.layerwise.projected`) never form a gradient of all parameters. They
work on the layers :func:`~infl_array.torch.layerwise.coverage.find_layers` finds
(``nn.Linear``, ``nn.Conv2d``, ``transformers``' ``Conv1D``, ``nn.Embedding``,
``nn.MultiheadAttention``'s packed input projection, normalisation layers; tied weights once)
and on what this module captures:

* **Layers.** :class:`LayerSpec`: a layer's kind, shape, sample dimension and the parameters
  it covers (:attr:`LayerSpec.parameter_names`). A grouped convolution, or a layer whose bias
  is trainable while its weight is frozen, is refused; freeze it
  (``layer.requires_grad_(False)``) to leave it out.
* **Layout.** A layer's gradient is a ``(d_out, width_in)`` matrix: the weight flattened to
  ``(d_out, d_in)`` (a Conv2d weight ``(C_out, C_in, kh, kw)`` as ``(C_out, C_in*kh*kw)``, the
  order of :func:`torch.nn.functional.unfold`), then the bias as one more column. A
  ``Conv1D`` weight ``(d_in, d_out)`` is taken transposed, as ``(d_out, d_in)``; an embedding
  ``(vocab, width)`` as ``(width, vocab)`` (its input is the token's one-hot row); a
  ``"module"`` layer's trainable parameters as one ``(n_params, 1)`` column.
* **Positions.** A Linear layer applied to ``(n, *, d_in)`` sees ``prod(*)`` positions per
  sample; a Conv2d sees one position per output pixel, its input being the unfolded patch
  (zero padding, ``padding="same"`` and the non-zero ``padding_mode``s are applied as the layer
  applies them). A layer called several times in one forward pass (shared weights) contributes
  the positions of every call. The per-sample gradient of a layer is the sum over positions:
  ``grad_W l_i = sum_t g_{i,t} a_{i,t}^T`` with ``a`` the (bias-augmented) input and ``g`` the
  gradient of the per-sample loss with respect to the layer's output at that position.
  A call whose input has one sample while the batch has ``n`` (positions shared by every
  sample, e.g. GPT-2's position embedding) is taken as broadcast: its output is expanded to
  ``n`` samples, and each sample's gradient is its slice. Samples are moved first at
  recording: a layer whose module (or an enclosing one) declares
  ``batch_first=False`` is recorded from dimension 1 (:mod:`~infl_array.torch.layerwise.coverage`).
* **One pass.** :func:`capture` runs one forward pass with forward hooks that record each
  layer's input and output (the model continues with a copy of the output, so later in-place
  operations cannot change what was recorded), then one ``torch.autograd.grad`` of the
  objective with respect to the recorded outputs. No parameter gradient is computed and no
  ``.grad`` is touched.
* **Per-sample loss.** Influence uses the per-sample terms of the mean training loss:
  :func:`loss_objective` returns ``n * loss(outputs, y)``, whose gradient with respect to
  sample ``i``'s outputs is that of ``l_i = loss(outputs[i:i+1], y[i:i+1])`` when ``loss``
  reduces by mean over the batch (as ``torch.nn.functional.cross_entropy`` and
  :func:`~infl_array.torch.data.tokens.causal_lm_loss` do; output objects give their ``logits``,
  half-precision outputs are scored in float32);
  :func:`check_mean_reduction` refuses a loss that does not. :func:`pydvl_objective` is the
  label-free pseudo-loss pyDVL 0.10's ``EkfacInfluence`` uses for its curvature factors.
* **Mode.** A model in training mode with dropout or batch normalisation is refused
  (:func:`check_deterministic`): its outputs would be random or depend on the batch, and the
  forward passes would update running statistics. Call ``model.eval()`` first.
* **Memory.** :class:`~infl_array.errors.MemoryBudgetError` (a ``MemoryError``; imported here
  for compatibility) is raised, before allocating, when something would exceed the caller's
  memory budget; :func:`sample_chunks` splits a batch so that per-sample temporaries stay
  within what the budget (:class:`~infl_array.engine.budget.Budget`) has left.

Everything stays on the model's device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

from infl_array.engine.budget import Budget
from infl_array.errors import MemoryBudgetError, format_bytes
from infl_array.torch.data.tokens import as_float32_if_half, model_outputs

__all__ = [
    "KINDS",
    "Call",
    "LayerRecord",
    "LayerSpec",
    "MemoryBudgetError",
    "capture",
    "check_budget",
    "check_deterministic",
    "check_mean_reduction",
    "layer_gradients",
    "keep_mask",
    "loss_objective",
    "module_gradients",
    "one_hot_rows",
    "pydvl_objective",
    "sample_chunks",
]

Objective = Callable[[Any], torch.Tensor]


def check_budget(nbytes: int, budget: int | Budget, what: str, fix: str) -> None:
    """Raise :class:`~infl_array.errors.MemoryBudgetError` when ``nbytes`` do not fit.

    Parameters
    ----------
    nbytes : int
        Bytes the allocation needs.
    budget : int or Budget
        The memory budget in bytes, or a :class:`~infl_array.engine.budget.Budget`: then what
        it has left (its caches give bytes back first).
    what : str
        What would be allocated (with its shape), for the message.
    fix : str
        How to make it fit, for the message.
    """
    if isinstance(budget, Budget):
        with budget.hold(nbytes, what, fix):
            return
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(nbytes)}, more than the memory budget of "
            f"{format_bytes(budget)}; {fix}",
            what=what,
            nbytes=nbytes,
            budget=budget,
        )


CHUNK_FIX = (
    "raise memory_budget, or leave the largest layers out by freezing them "
    "(layer.requires_grad_(False))."
)


def sample_chunks(
    n: int, bytes_per_sample: int, budget: int | Budget, what: str
) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose temporaries fit ``budget``.

    With a :class:`~infl_array.engine.budget.Budget`, a chunk fits what the budget has left,
    and its bytes are held while the caller works on it (until the next chunk is asked for).
    Raises :class:`~infl_array.errors.MemoryBudgetError` when even one sample does not fit.
    """
    if isinstance(budget, Budget):
        step = budget.count(bytes_per_sample, n, what, CHUNK_FIX)
        for start in range(0, n, step):
            stop = min(start + step, n)
            with budget.hold(
                (stop - start) * bytes_per_sample, f"{what} for {stop - start} samples"
            ):
                yield slice(start, stop)
        return
    check_budget(bytes_per_sample, budget, f"{what} for one sample", CHUNK_FIX)
    step = max(1, budget // max(1, bytes_per_sample))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


# --------------------------------------------------------------------------- layers
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)

KINDS = ("linear", "conv2d", "conv1d", "embedding", "mha_in", "module")
"""Layer kinds: how a layer's weight is applied (see the module docstring)."""

_LINEAR_ROLES = ("linear", "conv1d", "mha_in")


@dataclass(frozen=True)
class LayerSpec:
    """A layer whose parameters influence is taken with respect to.

    Attributes
    ----------
    name : str
        The module's qualified name in the model (``""`` for the model itself).
    module : torch.nn.Module
        The module whose calls are recorded (for ``"mha_in"`` the ``nn.MultiheadAttention``).
    d_in : int
        Inputs per position: ``in_features``, ``C_in * kh * kw`` for a convolution, the
        vocabulary for an embedding, 1 for a ``"module"`` layer.
    d_out : int
        Outputs per position: ``out_features``, ``C_out``, the embedding width, or the
        parameter count of a ``"module"`` layer.
    has_bias : bool
        Whether the bias is included (present and trainable).
    kind : str
        One of :data:`KINDS`.
    batch_axis : int
        Dimension of the samples in the layer's input and output (1: sequence-first).
    tied : tuple of (torch.nn.Module, int, str)
        Other modules that share this layer's weight, with their batch axis and role
        (``"tied"``: an embedding, in this layer's layout transposed; ``"own"``: a layer of
        the same kind); their calls add positions to this layer
        (:mod:`~infl_array.torch.layerwise.coverage`, "tied weights").
    parameter_names : tuple of str
        Qualified names of the included parameters (weight, then bias; a ``"module"`` layer's
        trainable parameters in registration order), as ``named_parameters`` names them.
    """

    name: str
    module: nn.Module = field(compare=False, repr=False)
    d_in: int
    d_out: int
    has_bias: bool
    kind: str = "linear"
    batch_axis: int = 0
    tied: tuple[tuple[nn.Module, int, str], ...] = field(default=(), compare=False, repr=False)
    parameter_names: tuple[str, ...] = ()

    @property
    def width_in(self) -> int:
        """Columns of the gradient matrix: ``d_in`` plus one for the bias."""
        return self.d_in + int(self.has_bias)

    @property
    def n_params(self) -> int:
        """Parameters of the layer that are included: ``d_out * width_in``."""
        return self.d_out * self.width_in

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
        if self.kind in _LINEAR_ROLES and x.ndim < 2:
            raise ValueError(
                f"layer {self.name!r} got an input of shape {tuple(x.shape)}; per-layer "
                "capture needs a leading sample dimension, (n, ..., in_features)."
            )

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """One call's input as bias-augmented activations, ``(n, T, width_in)``.

        For an embedding, ``x`` holds token ids and the activations are their one-hot rows
        (dense: for inspection and small vocabularies; the backends use
        :meth:`project_activations` or the ids themselves where they can).
        """
        self._check_input(x)
        n = x.shape[0]
        if self.kind == "embedding":
            return one_hot_rows(self.module, x.reshape(n, -1), self.d_in)
        if self.kind != "conv2d":
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

        For a convolution this is itself a convolution with ``k`` filters (no unfolded patches);
        for an embedding it is a gather of ``proj``'s columns at the token ids.
        """
        self._check_input(x)
        if self.kind == "embedding":
            ids = x.reshape(x.shape[0], -1)
            return proj.T[ids] * keep_mask(self.module, ids)[..., None].to(proj.dtype)
        if self.kind != "conv2d":
            weight = proj[:, : self.d_in]
            out = x.reshape(x.shape[0], -1, self.d_in).to(proj.dtype) @ weight.T
        else:
            conv = self.module
            assert isinstance(conv, nn.Conv2d)
            xp, pad = self._padded(x.to(proj.dtype))
            filters = proj[:, : self.d_in].reshape(proj.shape[0], *conv.weight.shape[1:])
            y = F.conv2d(xp, filters, None, conv.stride, pad, conv.dilation)
            out = y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2)
        if self.has_bias:
            out = out + proj[:, self.d_in]
        return out

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """One call's output gradient per position, ``(n, T, d_out)``."""
        n = g.shape[0]
        if self.kind == "conv2d":
            return g.reshape(n, self.d_out, -1).transpose(1, 2)
        return g.reshape(n, -1, self.d_out)


def keep_mask(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Positions whose token gets a gradient: all but an embedding's ``padding_idx``."""
    pad = getattr(module, "padding_idx", None)
    return torch.ones_like(ids, dtype=torch.bool) if pad is None else ids != pad


def one_hot_rows(module: nn.Module, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """One-hot rows ``(n, T, vocab)`` of token ids (zero at the embedding's ``padding_idx``)."""
    weight = cast(torch.Tensor, module.weight)
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    rows = F.one_hot(ids.long(), vocab).to(dtype)
    return rows * keep_mask(module, ids)[..., None].to(dtype)


def _describe(module: nn.Module) -> str:
    return type(module).__name__


def check_deterministic(model: nn.Module) -> None:
    """Refuse a model in training mode with dropout or batch normalisation."""
    for name, module in model.named_modules():
        random_attention = isinstance(module, nn.MultiheadAttention) and module.dropout > 0
        if module.training and (isinstance(module, _STOCHASTIC) or random_attention):
            raise ValueError(
                f"{type(model).__name__} is in training mode and its module {name!r} "
                f"({_describe(module)}) is random or batch-dependent there; influence needs the "
                "deterministic model (and must not update running statistics). Call "
                "model.eval() first."
            )


# --------------------------------------------------------------------------- objectives
def loss_objective(loss: Callable[..., torch.Tensor], y: torch.Tensor) -> Objective:
    """``outputs -> n * loss(outputs, y)``: the sum of the per-sample terms of the mean loss."""

    def objective(outputs: Any) -> torch.Tensor:
        outputs = as_float32_if_half(model_outputs(outputs))
        value = loss(outputs, y)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"loss(outputs, targets) must return a scalar tensor (the mean over the batch), "
                f"got {shape}; use reduction='mean'."
            )
        return value * outputs.shape[0]

    return objective


def pydvl_objective(outputs: Any) -> torch.Tensor:
    """pyDVL 0.10's label-free curvature pseudo-loss for softmax classifiers.

    ``sum_i sum_c sqrt(p_ic) log p_ic`` with ``p = softmax(outputs, dim=1)`` and ``sqrt(p)``
    held constant (``pydvl.influence.torch.util.empirical_cross_entropy_loss_fn``); ``log p``
    is ``log_softmax`` (finite where a probability underflows to 0, whose term is then 0). Its
    gradient for sample ``i`` with respect to the logits is ``sqrt(p_i) - p_i sum_c
    sqrt(p_ic)``, whose outer product is pyDVL's estimate of the Fisher.
    """
    outputs = as_float32_if_half(model_outputs(outputs))
    if outputs.ndim < 2:
        raise ValueError(
            f"fisher_type='pydvl' needs class scores of shape (n, n_classes, ...), got model "
            f"outputs of shape {tuple(outputs.shape)}; pass fisher_type='empirical'."
        )
    log_probs = torch.log_softmax(outputs, dim=1)  # finite where softmax underflows to 0
    return torch.sum(log_probs * log_probs.detach().mul(0.5).exp())


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
class Call:
    """One recorded call of a layer's module, samples first.

    Attributes
    ----------
    role : str
        ``"own"`` (the layer's module), ``"tied"`` (an embedding sharing the layer's weight).
    x : torch.Tensor
        The call's first input (detached; token ids for an embedding).
    g : torch.Tensor or None
        The objective's gradient with respect to the call's output (set after the backward).
    module : torch.nn.Module
        The module called.
    rest : tuple
        The call's other positional arguments and keyword arguments (``"module"`` layers).
    params : dict of str to torch.Tensor
        The module's own parameter values during the call (``"module"`` layers).
    """

    role: str
    x: torch.Tensor
    module: nn.Module = field(repr=False)
    batch_axis: int = 0
    g: torch.Tensor | None = None
    rest: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
    params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


@dataclass
class LayerRecord:
    """What one forward and backward pass recorded for one layer.

    Attributes
    ----------
    spec : LayerSpec
        The layer.
    calls : list of Call
        Every call of the layer's module (and of modules tied to it), in order.
    dtype : torch.dtype or None
        The dtype the working tensors are returned in (None: the recorded one).
    """

    spec: LayerSpec
    calls: list[Call] = field(default_factory=list)
    dtype: torch.dtype | None = None
    mask: torch.Tensor | None = None
    """``(n, T)``: the positions that count (an attention mask); positions of a call that has
    ``T`` of them are zeroed elsewhere (None: all count)."""

    def _masked(self, t: torch.Tensor, rows: slice) -> torch.Tensor:
        if self.mask is None or t.shape[1] != self.mask.shape[1]:
            return t
        return t * self.mask[rows, :, None].to(t.dtype)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """Each call's first input, samples first."""
        return [c.x for c in self.calls]

    @property
    def grads(self) -> list[torch.Tensor]:
        """Each call's output gradient, samples first."""
        return [c.g for c in self.calls if c.g is not None]

    @property
    def n(self) -> int:
        """Samples in the batch."""
        return int(self.calls[0].x.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the recorded inputs and output gradients."""
        return sum(
            c.x.element_size() * c.x.numel()
            + (0 if c.g is None else c.g.element_size() * c.g.numel())
            for c in self.calls
        )

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.dtype is None or not t.is_floating_point() else t.to(self.dtype)

    def _call_acts(self, c: Call, rows: slice) -> torch.Tensor:
        spec = self.spec
        if c.role == "tied":  # an embedding in this layer's (vocab, width) layout
            assert c.g is not None
            g = self._cast(c.g[rows])
            g = g.reshape(g.shape[0], -1, g.shape[-1])
            return F.pad(g, (0, 1)) if spec.has_bias else g
        if spec.kind == "module":
            return torch.ones((c.x[rows].shape[0], 1, 1), dtype=self._dtype(c), device=c.x.device)
        return self._cast(spec.activations(c.x[rows]))

    def _call_grads(self, c: Call, rows: slice) -> torch.Tensor:
        spec = self.spec
        if c.role == "tied":
            ids = c.x[rows].reshape(c.x[rows].shape[0], -1)
            return self._cast(one_hot_rows(c.module, ids, spec.d_out)).to(self._dtype(c))
        if spec.kind == "module":
            return module_gradients(c, rows, spec.parameter_names, self._dtype(c))
        assert c.g is not None
        return self._cast(spec.output_grads(c.g[rows]))

    def _dtype(self, c: Call) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return c.g.dtype if c.g is not None else torch.get_default_dtype()

    def activations(self, rows: slice = slice(None)) -> torch.Tensor:
        """Bias-augmented inputs at every position of every call, ``(n, T, width_in)``."""
        parts = [self._masked(self._call_acts(c, rows), rows) for c in self.calls]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def output_grads(self, rows: slice = slice(None)) -> torch.Tensor:
        """Output gradients at every position of every call, ``(n, T, d_out)``."""
        parts = [self._masked(self._call_grads(c, rows), rows) for c in self.calls]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def projected_activations(self, proj: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``proj @ a`` at every position, ``(n, T, k)``."""
        parts = []
        for c in self.calls:
            if c.role == "own" and self.spec.kind != "module":
                part = self.spec.project_activations(c.x[rows], proj)
            else:
                part = self._call_acts(c, rows) @ proj.T
            parts.append(self._masked(part, rows))
        return torch.cat(parts, 1)

    def projected_output_grads(self, proj: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``proj @ g`` at every position, ``(n, T, k)``; a tied embedding's one-hot output
        gradients are gathered columns of ``proj``."""
        parts = []
        for c in self.calls:
            if c.role == "tied":
                ids = c.x[rows].reshape(c.x[rows].shape[0], -1)
                part = proj.T[ids] * keep_mask(c.module, ids)[..., None].to(proj.dtype)
            else:
                part = self._call_grads(c, rows) @ proj.T
            parts.append(self._masked(part, rows))
        return torch.cat(parts, 1)

    def token_ids(self, rows: slice = slice(None)) -> torch.Tensor:
        """An embedding's token ids at every position, ``(n, T)``, ``-1`` where the token gets
        no gradient (``padding_idx``, or outside :attr:`mask`)."""
        parts = []
        for c in self.calls:
            ids = c.x[rows].reshape(c.x[rows].shape[0], -1).long()
            keep = keep_mask(c.module, ids)
            if self.mask is not None and ids.shape[1] == self.mask.shape[1]:
                keep = keep & self.mask[rows].bool()
            parts.append(ids.masked_fill(~keep, -1))
        return torch.cat(parts, dim=1)

    @property
    def positions(self) -> int:
        """Positions per sample over all calls."""
        total = 0
        for c in self.calls:
            if self.spec.kind == "module":
                total += 1
            elif c.role == "tied" or self.spec.kind == "embedding":
                total += int(c.x[:1].numel())
            else:
                assert c.g is not None
                total += int(c.g[:1].numel()) // self.spec.d_out
        return total

    def per_sample_grads(self, rows: slice = slice(None)) -> torch.Tensor:
        """Per-sample gradients of the layer, ``(n, d_out, width_in)`` (sum over positions)."""
        return self.output_grads(rows).transpose(1, 2) @ self.activations(rows)


def module_gradients(
    c: Call, rows: slice, names: Sequence[str], dtype: torch.dtype
) -> torch.Tensor:
    """Per-sample gradients of a ``"module"`` layer's parameters, ``(n, 1, n_params)``.

    The module is applied to each sample alone (``torch.func.vmap`` of a vector-Jacobian
    product, with the recorded output gradient), so it must treat samples independently (as
    normalisation layers do).
    """
    assert c.g is not None
    local = [name.rsplit(".", 1)[-1] for name in names]
    params = {k: c.params[k] for k in local}
    args, kwargs = c.rest
    axis = c.batch_axis

    def one(xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            values = {**c.params, **p}
            out = functional_call(c.module, values, (xi.unsqueeze(axis), *args), kwargs)
            return out.squeeze(axis)

        (grads,) = vjp(f, params)[1](gi.to(xi.dtype) if xi.is_floating_point() else gi)
        return torch.cat([grads[k].reshape(-1) for k in local])

    x, g = c.x[rows], c.g[rows]
    with torch.enable_grad():
        out = vmap(one)(x, g)
    return out.to(dtype)[:, None, :]


def _expanded(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    return t.expand(*[n if d == axis else -1 for d in range(t.ndim)])


def _batch_first(t: torch.Tensor, axis: int) -> torch.Tensor:
    return t if axis == 0 else t.movedim(axis, 0)


def _record(
    layers: Sequence[LayerSpec],
    records: list[LayerRecord],
    outputs: list[list[torch.Tensor]],
    n: int,
    i: int,
    role: str,
    module: nn.Module,
    axis: int,
    args: tuple,
    kwargs: dict,
    out: Any,
) -> torch.Tensor:
    """Forward hook body: record the input of call of layer ``i`` and keep its output."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"layer {layers[i].name!r} ({_describe(module)}) returned "
            f"{type(out).__name__}; per-layer capture needs modules that return a tensor."
        )
    inp = args[0] if args else next(iter(kwargs.values()))
    if n > 1 and inp.ndim > axis and inp.shape[axis] == 1 and out.shape[axis] == 1:
        # shared by every sample (position ids): the output is broadcast, so each sample's
        # gradient is its slice of the gradient of the expanded output
        inp, out = _expanded(inp, axis, n), _expanded(out, axis, n)
    own = {}
    if layers[i].kind == "module":
        own = {k: p.detach() for k, p in module.named_parameters(recurse=False)}
        own.update({k: b for k, b in module.named_buffers(recurse=False)})
    rest = (tuple(args[1:]), dict(kwargs)) if args else ((), {})
    rec = Call(role, _batch_first(inp.detach(), axis), module, axis, None, rest, own)
    records[i].calls.append(rec)
    outputs[i].append(out)
    return out.clone()  # later in-place operations change the copy, not `out`


def _install_hooks(
    layers: Sequence[LayerSpec], record: Callable[..., torch.Tensor]
) -> tuple[list[Any], dict[int, Callable[..., torch.Tensor]]]:
    """Register ``record`` as forward hook of each layer (and its tied modules).

    Returns the hook handles and, for ``mha_in`` layers, the in-projection taps keyed by
    the id of the attention module (for :func:`patched_attention`).
    """

    def make_hook(i: int, role: str, axis: int) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
            return record(i, role, module, axis, args, kwargs, out)

        return hook

    def tap(i: int) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
        def in_projection(module: nn.Module, inp: torch.Tensor, out: torch.Tensor):
            return record(i, "own", module, 0, (inp,), {}, out)

        return in_projection

    handles = []
    taps: dict[int, Callable[..., torch.Tensor]] = {}
    for i, spec in enumerate(layers):
        if spec.kind == "mha_in":
            taps[id(spec.module)] = tap(i)
            continue
        handles.append(
            spec.module.register_forward_hook(
                make_hook(i, "own", spec.batch_axis), with_kwargs=True
            )
        )
        for module, axis, role in spec.tied:
            handles.append(module.register_forward_hook(make_hook(i, role, axis), with_kwargs=True))
    return handles, taps


def _forward(
    model: nn.Module,
    x: Any,
    params: dict[str, torch.Tensor] | None,
    call: Callable[[nn.Module, Any, dict[str, torch.Tensor] | None], Any] | None,
) -> Any:
    if call is not None:
        return call(model, x, params)
    return model(x) if params is None else functional_call(model, params, (x,))


def _check_called(
    model: nn.Module, layers: Sequence[LayerSpec], outputs: list[list[torch.Tensor]]
) -> None:
    missing = [spec.name for spec, outs in zip(layers, outputs, strict=True) if not outs]
    if missing:
        raise ValueError(
            f"layers {missing} have trainable parameters but were not called by "
            f"{type(model).__name__}.forward (their weights are used some other way); "
            "per-layer backends need each layer called as a module. Leave them out by "
            "freezing them (layer.requires_grad_(False))."
        )


def _attach_grads(
    records: list[LayerRecord],
    outputs: list[list[torch.Tensor]],
    grads: Sequence[torch.Tensor | None],
    n: int,
) -> None:
    """Store the output gradient of each recorded call, samples first, checking the batch."""
    it = iter(grads)
    for rec, outs in zip(records, outputs, strict=True):
        for out, c in zip(outs, rec.calls, strict=True):
            g = next(it)
            g = _batch_first(torch.zeros_like(out) if g is None else g.detach(), c.batch_axis)
            if c.x.shape[0] != n or g.shape[0] != n:
                side = "sequence-first" if c.batch_axis else "batch-first"
                raise ValueError(
                    f"layer {rec.spec.name!r} saw an input of shape {tuple(c.x.shape)} for a "
                    f"batch of {n} samples ({side}, samples moved first); per-sample capture "
                    "needs the samples along the first dimension of every layer's input and "
                    "output (the second under a module declaring batch_first=False)."
                )
            c.g = g


def _forward_backward(
    model: nn.Module,
    x: Any,
    params: dict[str, torch.Tensor] | None,
    call: Callable[[nn.Module, Any, dict[str, torch.Tensor] | None], Any] | None,
    objective: Objective,
    layers: Sequence[LayerSpec],
    outputs: list[list[torch.Tensor]],
    record: Callable[..., torch.Tensor],
) -> Sequence[torch.Tensor | None]:
    """Run the hooked forward pass and return the gradients of the recorded outputs."""
    from infl_array.torch.layerwise.attention import patched_attention  # imports this module

    handles, taps = _install_hooks(layers, record)
    try:
        with torch.enable_grad(), patched_attention(model, taps):
            value = objective(_forward(model, x, params, call))
            _check_called(model, layers, outputs)
            flat = [o for outs in outputs for o in outs]
            return torch.autograd.grad(value, flat, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    x: Any,
    objective: Objective,
    params: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    call: Callable[[nn.Module, Any, dict[str, torch.Tensor] | None], Any] | None = None,
    mask: torch.Tensor | None = None,
) -> list[LayerRecord]:
    """One forward and one backward pass; the inputs and output gradients of ``layers``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (in the mode it is in; see :func:`check_deterministic`).
    layers : sequence of LayerSpec
        The layers to record (from :func:`~infl_array.torch.layerwise.coverage.find_layers`).
    x : torch.Tensor
        A batch of inputs, ``(n, ...)``, on the model's device.
    objective : callable
        ``objective(outputs) -> scalar`` whose gradient is recorded (e.g.
        :func:`loss_objective`).
    params : dict of str to torch.Tensor, optional
        Parameter and buffer values to evaluate the model at
        (:func:`torch.func.functional_call`); the module's own by default. Trainable values
        must require grad so that the layer outputs are part of the autograd graph.
    dtype : torch.dtype, optional
        Dtype of the working tensors the records return (float32 for half-precision models).
    call : callable, optional
        ``call(model, x, params) -> outputs``; by default ``model(x)`` or
        ``functional_call(model, params, (x,))``.
    mask : torch.Tensor, optional
        ``(n, T)`` positions that count (an attention mask): the positions of calls with ``T``
        positions outside it are left out of activations and gradients (padding).

    Returns
    -------
    list of LayerRecord
        One per layer, in the order of ``layers``.

    Raises
    ------
    ValueError
        If a layer was not called by ``model.forward``, or saw an input whose sample dimension
        is not the batch size.
    """
    records = [LayerRecord(spec, dtype=dtype, mask=mask) for spec in layers]
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    n = _batch_size(x)

    record = functools.partial(_record, layers, records, outputs, n)
    grads = _forward_backward(model, x, params, call, objective, layers, outputs, record)
    _attach_grads(records, outputs, grads, n)
    return records


def _batch_size(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, Mapping):
        return _batch_size(next(iter(x.values())))
    raise TypeError(f"model inputs must be a tensor or a mapping of tensors, got {type(x)}.")


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
