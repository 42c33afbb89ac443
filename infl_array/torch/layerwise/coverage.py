"""Which parameters the per-layer backends cover, and the warning for those left out.

:func:`find_layers` lists the layers of a model whose parameters are trainable
(:class:`~infl_array.torch.layerwise.capture.LayerSpec`):

* ``nn.Linear`` (also inside another module, such as ``nn.MultiheadAttention.out_proj``),
  ``nn.Conv2d`` (``groups=1``), Hugging Face ``transformers``' ``Conv1D`` (GPT-2's layers,
  ``x @ W + b`` with ``W`` of shape ``(d_in, d_out)``: recognised by its class name, module and
  weight layout, without importing ``transformers``), ``nn.Embedding`` (one-hot inputs, so
  that a sample's gradient touches only its tokens' rows; ``padding_idx`` rows get none; not
  with ``max_norm`` or ``scale_grad_by_freq``), the packed input projection of a supported
  ``nn.MultiheadAttention`` (:mod:`~infl_array.torch.layerwise.attention`);
* ``"module"`` layers: any other module without children whose trainable parameters are all
  vectors (normalisation layers: ``LayerNorm``, RMS norms, ...). Their per-sample gradient is
  taken by re-applying the module to each sample's recorded input
  (:func:`~infl_array.torch.layerwise.capture.module_gradients`), and their curvature is the full
  covariance of that gradient (a layer with one input, 1, and ``n_params`` outputs);
* **tied weights**: a weight shared by an ``nn.Embedding`` and an ``nn.Linear`` of the same
  shape ``(vocab, width)`` (an input embedding and an output layer) is ONE parameter, covered
  once, in the Linear's layout: the embedding's positions are added with the roles of input
  and output gradient swapped (input: the gradient of the embedding's output; output
  gradient: the token's one-hot row), so the layer's gradient is the sum over both uses.
  Linears sharing a weight (and their bias) are one layer called several times.
* **sequence-first layers**: the samples of a layer's input are on dimension 1 when the
  nearest enclosing module that declares a layout declares ``batch_first=False`` (an attribute
  ``batch_first``, as ``nn.Transformer``, ``nn.MultiheadAttention`` and recurrent layers
  have; ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer`` through their
  ``self_attn``). A module of your own applying layers to ``(T, n, d)`` declares it with
  ``self.batch_first = False``. Shapes are never used to guess it.

Every trainable parameter outside these layers is left out. :func:`coverage_report` says
which (:class:`PartialCoverageWarning` at ``fit``, or a ``ValueError`` with
``strict_coverage=True``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from torch import nn

from infl_array.torch.layerwise.attention import supported
from infl_array.torch.layerwise.capture import LayerSpec

__all__ = [
    "Coverage",
    "PartialCoverageWarning",
    "coverage_report",
    "find_layers",
    "is_hf_conv1d",
    "warn_or_raise",
]


class PartialCoverageWarning(UserWarning):
    """Some trainable parameters are not covered by a per-layer backend (influence ignores
    them). The message names their modules and the fraction of parameters covered."""


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (``x @ W + b``, ``W``: ``(nx, nf)``)."""
    cls = type(module)
    weight = getattr(module, "weight", None)
    return (
        cls.__name__ == "Conv1D"
        and cls.__module__.startswith("transformers")
        and isinstance(weight, nn.Parameter)
        and weight.ndim == 2
        and tuple(weight.shape) == (getattr(module, "nx", -1), getattr(module, "nf", -1))
    )


def _declared_batch_first(module: nn.Module) -> bool | None:
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return bool(module.self_attn.batch_first)
    declared = getattr(module, "batch_first", None)
    return declared if isinstance(declared, bool) else None


def _batch_axes(model: nn.Module) -> dict[str, int]:
    """Sample dimension of each module's inputs, from the layouts its ancestors declare."""
    axes: dict[str, int] = {}

    def visit(name: str, module: nn.Module, axis: int) -> None:
        declared = _declared_batch_first(module)
        if declared is not None:
            axis = 0 if declared else 1
        if supported(module):
            axis = 0  # attention_forward works samples-first inside
        axes[name] = axis
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child, axis)

    visit("", model, 0)
    return axes


def _weight_layer(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if is_hf_conv1d(module):
        return "conv1d"
    if (
        isinstance(module, nn.Embedding)
        and module.max_norm is None
        and not module.scale_grad_by_freq
    ):
        return "embedding"
    return None


def _refuse_frozen_weight(name: str, module: nn.Module, weight: nn.Parameter, bias) -> None:
    if not weight.requires_grad and bias is not None and bias.requires_grad:
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has a trainable bias but a frozen "
            "weight; per-layer backends take a layer whole. Freeze the bias too "
            f"(model.get_submodule({name!r}).bias.requires_grad_(False)) to leave the "
            "layer out, or unfreeze the weight."
        )


@dataclass
class _Use:
    name: str
    module: nn.Module
    kind: str


def _weight(module: nn.Module) -> nn.Parameter:
    return cast(nn.Parameter, module.weight)


def _dims(kind: str, module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a weight layer."""
    weight = _weight(module)
    if kind == "conv2d":
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            raise ValueError(
                f"Conv2d layer has groups={module.groups}; per-layer backends support groups=1 "
                "only. Leave it out by freezing it (layer.requires_grad_(False))."
            )
        return module.in_channels * module.kernel_size[0] * module.kernel_size[1], (
            module.out_channels
        )
    if kind == "conv1d":
        return int(weight.shape[0]), int(weight.shape[1])
    if kind == "embedding":
        return int(weight.shape[0]), int(weight.shape[1])  # (vocab, width): one-hot inputs
    return int(weight.shape[1]), int(weight.shape[0])


def _weight_specs(
    uses: list[_Use], names: dict[int, str], axes: dict[str, int]
) -> LayerSpec | None:
    """One layer for the modules sharing one trainable weight (None: a tie not covered)."""
    first = uses[0]
    weight = _weight(first.module)
    embeds = [u for u in uses if u.kind == "embedding"]
    dense = [u for u in uses if u.kind != "embedding"]
    if len(uses) == 1:
        primary, tied = first, []
    elif len({u.kind for u in dense}) <= 1 and all(u.kind == "linear" for u in dense) and dense:
        biases = {id(getattr(u.module, "bias", None)) for u in dense}
        if len(biases) > 1:
            return None  # Linears sharing a weight but not a bias: not one layer
        primary, tied = dense[0], [*dense[1:], *embeds]
        if any(tuple(_weight(e.module).shape) != tuple(weight.shape) for e in embeds):
            return None
    else:
        return None
    bias = getattr(primary.module, "bias", None)
    has_bias = bias is not None and bias.requires_grad
    try:
        d_in, d_out = _dims(primary.kind, primary.module)
    except ValueError as exc:
        raise ValueError(f"layer {primary.name!r}: {exc}") from None
    param_names = (names[id(weight)], *((names[id(bias)],) if has_bias else ()))
    return LayerSpec(
        primary.name,
        primary.module,
        d_in,
        d_out,
        has_bias,
        kind=primary.kind,
        batch_axis=axes[primary.name],
        tied=tuple(
            (u.module, axes[u.name], "tied" if u.kind == "embedding" else "own") for u in tied
        ),
        parameter_names=param_names,
    )


def _leaves_with_vectors(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and not any(True for _ in module.children()) and all(p.ndim <= 1 for p in own):
            yield name, module


def _mha_spec(
    name: str, module: nn.MultiheadAttention, names: dict[int, str], taken: set[int]
) -> LayerSpec | None:
    """The packed in-projection of an attention module as a layer (None if frozen or taken)."""
    packed, packed_bias = module.in_proj_weight, module.in_proj_bias
    _refuse_frozen_weight(name, module, packed, packed_bias)
    if not packed.requires_grad or id(packed) in taken:
        return None
    has_bias = packed_bias is not None and packed_bias.requires_grad
    spec = LayerSpec(
        name,
        module,
        module.embed_dim,
        3 * module.embed_dim,
        has_bias,
        kind="mha_in",
        parameter_names=(
            names[id(packed)],
            *((names[id(packed_bias)],) if has_bias else ()),
        ),
    )
    taken.update({id(packed), id(packed_bias)})
    return spec


def _vector_specs(
    model: nn.Module,
    names: dict[int, str],
    axes: dict[str, int],
    order: dict[str, int],
    taken: set[int],
    skip: set[str],
) -> list[tuple[int, LayerSpec]]:
    """Leaf modules whose own trainable parameters are only vectors, as ``module`` layers."""
    found = []
    for name, module in _leaves_with_vectors(model):
        own = [(k, p) for k, p in module.named_parameters(recurse=False) if p.requires_grad]
        if any(id(p) in taken for _, p in own) or any(name.startswith(f"{s}.") for s in skip):
            continue
        if any(names[id(p)] != (f"{name}.{k}" if name else k) for k, p in own):
            continue  # shared with another module: not covered by re-applying this one
        size = sum(p.numel() for _, p in own)
        spec = LayerSpec(
            name,
            module,
            1,
            size,
            False,
            kind="module",
            batch_axis=axes[name],
            parameter_names=tuple(names[id(p)] for _, p in own),
        )
        found.append((order[name], spec))
        taken.update(id(p) for _, p in own)
    return found


def _no_layers_error(model: nn.Module) -> ValueError:
    kinds = sorted(
        {type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(False))}
    )
    return ValueError(
        f"{type(model).__name__} has no layer the per-layer backends cover (modules with "
        f"parameters: {', '.join(kinds) or 'none'}); EkfacInfluence and ProjectedInfluence "
        "cover nn.Linear, nn.Conv2d, nn.Embedding, transformers' Conv1D, "
        "nn.MultiheadAttention and normalisation layers. Use CgInfluence, LissaInfluence "
        "or ArnoldiInfluence for other models."
    )


def find_layers(model: nn.Module) -> tuple[list[LayerSpec], list[str]]:
    """The covered layers of ``model`` (see the module docstring), and the parameters left out.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    layers : list of LayerSpec
        In ``named_modules`` order.
    excluded : list of str
        Names (as ``named_parameters`` gives them) of trainable parameters in no layer.

    Raises
    ------
    ValueError
        If no layer is covered, or a layer is configured in a way the per-layer backends
        refuse (grouped convolution, trainable bias with a frozen weight).
    """
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    axes = _batch_axes(model)
    skip: set[str] = set()  # modules inside attention that attention_forward cannot run
    by_weight: dict[int, list[_Use]] = {}
    found: list[tuple[int, LayerSpec]] = []  # (order, spec)
    order: dict[str, int] = {name: i for i, (name, _) in enumerate(model.named_modules())}
    taken: set[int] = set()
    for name, module in model.named_modules():
        if any(name.startswith(f"{s}.") for s in skip):
            continue
        if isinstance(module, nn.MultiheadAttention):
            if not supported(module):
                skip.add(name)
                continue
            spec = _mha_spec(name, module, names, taken)
            if spec is not None:
                found.append((order[name], spec))
            continue
        kind = _weight_layer(module)
        if kind is None:
            continue
        weight, bias = _weight(module), getattr(module, "bias", None)
        _refuse_frozen_weight(name, module, weight, bias)
        if weight.requires_grad:
            by_weight.setdefault(id(weight), []).append(_Use(name, module, kind))
    for uses in by_weight.values():
        tie = _weight_specs(uses, names, axes)
        if tie is not None:
            found.append((order[tie.name], tie))
            taken.update(id(p) for u in uses for p in u.module.parameters(recurse=False))
    found += _vector_specs(model, names, axes, order, taken, skip)
    layers = [spec for _, spec in sorted(found, key=lambda t: t[0])]
    covered = {n for spec in layers for n in spec.parameter_names}
    excluded = [n for n, p in model.named_parameters() if p.requires_grad and n not in covered]
    if not layers:
        raise _no_layers_error(model)
    return layers, excluded


@dataclass(frozen=True)
class Coverage:
    """Which trainable parameters a per-layer backend covers.

    Attributes
    ----------
    covered : tuple of str
        Names of the covered parameters.
    excluded : tuple of str
        Names of the trainable parameters left out.
    fraction : float
        Covered trainable parameter entries over all trainable entries.
    """

    covered: tuple[str, ...]
    excluded: tuple[str, ...]
    fraction: float

    @property
    def excluded_modules(self) -> list[str]:
        """The modules owning the excluded parameters (``"<model>"`` for the model's own)."""
        mods = [n.rsplit(".", 1)[0] if "." in n else "<model>" for n in self.excluded]
        return list(dict.fromkeys(mods))

    def message(self, who: str) -> str:
        """What is left out, with the fraction covered, and the fixes."""
        mods = self.excluded_modules
        listed = ", ".join(repr(m) for m in mods[:10]) + (
            f" and {len(mods) - 10} more" if len(mods) > 10 else ""
        )
        return (
            f"{who} covers {self.fraction:.1%} of the trainable parameters; the parameters of "
            f"{listed} ({len(self.excluded)} tensors) are left out, so influence ignores them. "
            "Freeze them (requires_grad_(False)) to make that explicit, or use a "
            "full-parameter backend (CgInfluence, ArnoldiInfluence)."
        )


def coverage_report(model: nn.Module, layers: list[LayerSpec], excluded: list[str]) -> Coverage:
    """The :class:`Coverage` of ``layers`` in ``model``."""
    sizes = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            sizes[name] = p.numel()
    covered = tuple(n for spec in layers for n in spec.parameter_names)
    total = sum(sizes.values())
    fraction = sum(sizes[n] for n in covered if n in sizes) / total if total else 1.0
    return Coverage(covered, tuple(excluded), fraction)


def warn_or_raise(coverage: Coverage, who: str, strict: bool) -> None:
    """:class:`PartialCoverageWarning` (or ``ValueError`` when ``strict``) if anything is left
    out."""
    if not coverage.excluded:
        return
    if strict:
        raise ValueError(coverage.message(who) + " (strict_coverage=True)")
    warnings.warn(coverage.message(who), PartialCoverageWarning, stacklevel=3)
