"""Parameter blocks and second-order modes, with pyDVL 0.10's names and meaning.

pyDVL's composable influence models approximate the curvature by a block-diagonal matrix: the
parameters are grouped into ordered blocks, each block gets its own curvature sub-matrix
``C_bb`` and regularization ``lambda_b``, and the influence is the sum over blocks

    ``I[i, j] = sum_b g_b(z_test_i)^T (C_bb + lambda_b*Id)^-1 g_b(z_train_j)``

where ``g_b`` is the loss gradient restricted to block ``b``'s parameters. In factorised form
(what :class:`~infl_array.torch.full.base.TorchInfluenceBase` computes) the test factor of a sample
is the concatenation over blocks of the per-block solves and the train factor is the gradient in
the same (block) order.

* :class:`BlockMode` (pyDVL's ``pydvl.influence.torch.util.BlockMode``): ``FULL`` -- one block
  ``""`` with every trainable parameter; ``LAYER_WISE`` -- one block per direct child module
  (``model.named_children()``) holding that child's trainable parameters, named after the child
  (parameters registered on the root module itself belong to no child and are left out, as in
  pyDVL); ``PARAMETER_WISE`` -- one block per trainable parameter, named after it.
* A mapping ``block name -> list of parameter names`` (e.g. an ``OrderedDict``) gives a custom
  structure, in the mapping's order; parameters not listed are left out of the influence
  altogether (their gradients are not part of either factor). A listed parameter that is frozen
  (``requires_grad=False``) is left out with a warning, as pyDVL does; an unknown name raises.
* :class:`SecondOrderMode`: ``HESSIAN`` -- the Hessian of the mean training loss; ``GAUSS_NEWTON``
  -- pyDVL's "Gauss-Newton" matrix ``G = 1/N sum_i grad l(z_i) grad l(z_i)^T`` (the mean outer
  product of per-sample loss gradients, a.k.a. the empirical Fisher).
* Regularization is a number (every block), ``None`` (no regularization: 0), or a mapping
  ``block name -> number or None`` whose keys are a subset of the block names; blocks missing from
  it get no regularization (pyDVL's documented meaning).

:func:`resolve_blocks` turns a structure into a :class:`ParameterBlocks` (index of every selected
parameter entry in the flat trainable-parameter vector of
:class:`~infl_array.torch.full.functional.FlatModel`); :func:`block_regularization` normalises a
regularization argument.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

__all__ = [
    "BlockMode",
    "BlockStructure",
    "ParameterBlocks",
    "SecondOrderMode",
    "block_regularization",
    "block_structure_config",
    "parse_block_structure",
    "parse_second_order_mode",
    "resolve_blocks",
]


class BlockMode(Enum):
    """How parameters are grouped into blocks of a block-diagonal curvature (pyDVL's values)."""

    LAYER_WISE = "layer_wise"
    PARAMETER_WISE = "parameter_wise"
    FULL = "full"


class SecondOrderMode(Enum):
    """Which curvature matrix is inverted (pyDVL's values)."""

    HESSIAN = "hessian"
    GAUSS_NEWTON = "gauss_newton"


BlockStructure = BlockMode | Mapping[str, Sequence[str]]
"""A :class:`BlockMode` or a mapping ``block name -> parameter names``."""


def _enum_value(value: object, enum: type[Enum], name: str) -> Enum:
    """Our enum member for ``value``: a member, its string value, or pyDVL's equal enum."""
    raw = value.value if isinstance(value, Enum) else value
    for member in enum:
        if raw == member.value:
            return member
    valid = ", ".join(f"{enum.__name__}.{m.name}" for m in enum)
    raise ValueError(f"{name} must be one of {valid}, got {value!r}.")


def parse_second_order_mode(value: object) -> SecondOrderMode:
    """Validate a second-order mode (ours, its string value, or pyDVL's enum member)."""
    mode = _enum_value(value, SecondOrderMode, "second_order_mode")
    assert isinstance(mode, SecondOrderMode)
    return mode


def parse_block_structure(value: object) -> BlockMode | dict[str, tuple[str, ...]]:
    """Validate a block structure: a :class:`BlockMode` (or its value) or a mapping."""
    if isinstance(value, Mapping):
        out: dict[str, tuple[str, ...]] = {}
        if not value:
            raise ValueError(
                "block_structure mapping is empty; give at least one block, e.g. "
                "OrderedDict(all=[name for name, _ in model.named_parameters()])."
            )
        for block, params in value.items():
            if not isinstance(block, str):
                raise ValueError(f"block names must be strings, got {block!r}.")
            if isinstance(params, str) or not isinstance(params, Sequence):
                raise ValueError(
                    f"block {block!r} must map to a list of parameter names, got {params!r}."
                )
            if not params or not all(isinstance(p, str) for p in params):
                raise ValueError(
                    f"block {block!r} must list at least one parameter name (strings), got "
                    f"{list(params)!r}."
                )
            out[block] = tuple(params)
        return out
    mode = _enum_value(value, BlockMode, "block_structure")
    assert isinstance(mode, BlockMode)
    return mode


def block_structure_config(structure: BlockMode | Mapping[str, Sequence[str]]) -> Any:
    """JSON-able form of a parsed block structure (for ``influence_config``)."""
    if isinstance(structure, BlockMode):
        return structure.value
    return [[name, list(params)] for name, params in structure.items()]


@dataclass(frozen=True)
class ParameterBlocks:
    """Ordered parameter blocks over a flat trainable-parameter vector.

    Attributes
    ----------
    names : tuple of str
        Block names, in order.
    params : tuple of tuple of str
        Parameter names of each block.
    sizes : tuple of int
        Number of parameter entries of each block.
    spans : tuple of (int, int)
        ``(start, size)`` in the flat trainable vector of each selected parameter, blocks
        concatenated in order (:attr:`index` spelled out; kept as spans so that a large
        model's selection costs no ``n_params``-long index until one is needed).
    is_identity : bool
        True when the selection is the whole flat vector in order with a single block (then no
        gathering or masking is needed).
    """

    names: tuple[str, ...]
    params: tuple[tuple[str, ...], ...]
    sizes: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    is_identity: bool

    @property
    def index(self) -> torch.Tensor:
        """``(n_selected,)`` long tensor: position in the flat trainable vector of each selected
        entry, blocks concatenated in order (made on each call)."""
        if not self.spans:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(s, s + k) for s, k in self.spans])

    @property
    def size(self) -> int:
        """Total number of selected parameter entries."""
        return sum(self.sizes)

    @property
    def slices(self) -> list[slice]:
        """Slice of each block in the selected (block-ordered) vector."""
        out, start = [], 0
        for s in self.sizes:
            out.append(slice(start, start + s))
            start += s
        return out

    def split_columns(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, size)`` gradients -> one column per (block, sample), zero off its block.

        Returns ``(columns, col_block)``: columns ``(size, n_blocks * n)`` ordered block by
        block and the block number of each; :meth:`merge_columns` undoes it.
        """
        n = grads.shape[0]
        if len(self.sizes) == 1:
            return grads.T.clone(), torch.zeros(n, dtype=torch.long, device=grads.device)
        cols = torch.zeros((self.size, n * len(self.sizes)), dtype=grads.dtype, device=grads.device)
        for b, sl in enumerate(self.slices):
            cols[sl, b * n : (b + 1) * n] = grads[:, sl].T
        col_block = torch.arange(len(self.sizes), device=grads.device).repeat_interleave(n)
        return cols, col_block

    def merge_columns(self, cols: torch.Tensor, n: int) -> torch.Tensor:
        """Inverse of :meth:`split_columns`: ``(n, size)`` rows."""
        return cols.reshape(cols.shape[0], len(self.sizes), n).sum(1).T

    def gram(self, g: torch.Tensor) -> torch.Tensor:
        """Block-diagonal part of ``g^T g`` (zero off the diagonal blocks), ``(size, size)``."""
        out = torch.zeros((g.shape[1], g.shape[1]), dtype=g.dtype, device=g.device)
        for sl in self.slices:
            out[sl, sl] = g[:, sl].T @ g[:, sl]
        return out

    def row_block(self, device: torch.device | None = None) -> torch.Tensor:
        """``(n_selected,)`` block number of each selected entry."""
        return torch.repeat_interleave(
            torch.arange(len(self.sizes), device=device),
            torch.tensor(self.sizes, device=device),
        )


def _layer_wise(model: nn.Module) -> dict[str, tuple[str, ...]]:
    out = {}
    for child, module in model.named_children():
        names = tuple(f"{child}.{n}" for n, p in module.named_parameters() if p.requires_grad)
        if names:
            out[child] = names
    return out


def resolve_blocks(
    model: nn.Module, structure: BlockMode | Mapping[str, Sequence[str]]
) -> ParameterBlocks:
    """Blocks of ``model``'s trainable parameters for a parsed structure.

    The flat vector they index is the trainable parameters in ``model.named_parameters()``
    order, each flattened (the layout of :class:`~infl_array.torch.full.functional.FlatModel`).
    """
    all_params = dict(model.named_parameters())
    trainable = [(n, p) for n, p in all_params.items() if p.requires_grad]
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for n, p in trainable:
        offsets[n] = (start, p.numel())
        start += p.numel()
    if structure is BlockMode.FULL:
        spec = {"": tuple(n for n, _ in trainable)}
    elif structure is BlockMode.PARAMETER_WISE:
        spec = {n: (n,) for n, _ in trainable}
    elif structure is BlockMode.LAYER_WISE:
        spec = _layer_wise(model)
        if not spec:
            raise ValueError(
                f"BlockMode.LAYER_WISE found no child module with trainable parameters in "
                f"{type(model).__name__} (it groups by model.named_children()); use "
                "BlockMode.PARAMETER_WISE or a mapping of block names to parameter names."
            )
    else:
        assert isinstance(structure, Mapping)
        spec = {}
        for block, names in structure.items():
            kept = []
            for name in names:
                if name not in all_params:
                    raise ValueError(
                        f"block {block!r} lists parameter {name!r}, which "
                        f"{type(model).__name__} does not have; its parameters are "
                        f"{list(all_params)}."
                    )
                if not all_params[name].requires_grad:
                    warnings.warn(
                        f"parameter {name!r} of block {block!r} is frozen "
                        "(requires_grad=False) and is left out of the influence.",
                        UserWarning,
                        stacklevel=4,
                    )
                    continue
                kept.append(name)
            if not kept:
                raise ValueError(
                    f"block {block!r} has no trainable parameter; remove it or list trainable "
                    "parameters."
                )
            spec[block] = tuple(kept)
    return _blocks_of(spec, offsets, start)


def _blocks_of(
    spec: dict[str, tuple[str, ...]], offsets: dict[str, tuple[int, int]], total: int
) -> ParameterBlocks:
    """The blocks ``spec`` names, over a flat vector of ``total`` entries where parameter
    ``name`` holds ``offsets[name] = (start, size)``."""
    spans, sizes = [], []
    for names in spec.values():
        size = 0
        for name in names:
            s, k = offsets[name]
            spans.append((s, k))
            size += k
        sizes.append(size)
    ends = [s + k for s, k in spans]
    in_order = all(s == e for (s, _), e in zip(spans[1:], ends, strict=False))
    identity = len(sizes) == 1 and in_order and (not spans or spans[0][0] == 0)
    identity = identity and sum(sizes) == total
    return ParameterBlocks(
        names=tuple(spec),
        params=tuple(spec.values()),
        sizes=tuple(sizes),
        spans=tuple(spans),
        is_identity=identity,
    )


def _reg_value(value: object, where: str, positive: bool) -> float | None:
    if value is None:
        if positive:
            raise ValueError(
                f"{where} must be a number > 0, got None; pass e.g. regularization=1e-3."
            )
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number >= 0 or None, got {value!r}.")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where} must be {bound}, got {value!r}; pass e.g. 1e-3.")
    return float(value)


def block_regularization(
    regularization: object, block_names: Sequence[str], *, positive: bool = False
) -> tuple[float | dict[str, float | None], list[float]]:
    """Normalise a regularization argument against block names.

    Parameters
    ----------
    regularization : float, None or mapping
        See the module docstring.
    block_names : sequence of str
        The blocks, in order.
    positive : bool
        Require a value ``> 0`` for every block (methods that divide by it).

    Returns
    -------
    (config, per_block)
        ``config``: a float (one value for all) or ``{block: float or None}`` (JSON-able);
        ``per_block``: the value of each block, ``None`` read as 0.
    """
    if isinstance(regularization, Mapping):
        unknown = [k for k in regularization if k not in block_names]
        if unknown:
            raise ValueError(
                f"regularization keys {unknown!r} are not block names; the blocks are "
                f"{list(block_names)!r} (keys must be a subset of them)."
            )
        values = {
            b: _reg_value(regularization.get(b), f"regularization[{b!r}]", positive)
            for b in block_names
        }
        return values, [0.0 if v is None else v for v in values.values()]
    value = _reg_value(regularization, "regularization", positive)
    value = 0.0 if value is None else value
    return value, [value] * len(block_names)
