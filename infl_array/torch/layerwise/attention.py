"""``nn.MultiheadAttention`` as the per-layer backends capture it: projections as layers.

``nn.MultiheadAttention`` applies its packed input projection (``in_proj_weight``,
``in_proj_bias``) and its ``out_proj`` inside one functional call, so neither is called as a
module. During a capture pass, :func:`patched_attention` replaces the ``forward`` of every
supported attention module of the model (:func:`supported`) by :func:`attention_forward`,
the same computation written out:

* the packed projection ``F.linear(x, in_proj_weight, in_proj_bias)`` of the query (and, for
  cross-attention, of the key and the value: each a call of the ``(3E, E)`` layer whose output
  gradient is zero outside its third), recorded by the capture;
* scaled dot-product attention per head with the module's masks (``attn_mask`` boolean or
  additive, ``key_padding_mask``, ``is_causal``), softmax, attention dropout as the module
  applies it;
* ``self.out_proj(...)`` called as a module, so that its forward hook records it like any
  ``nn.Linear``.

Inputs are turned samples-first (``batch_first=False`` modules take ``(T, n, E)``), so both
projections see ``(n, T, E)``. Outside capture passes the module's own ``forward`` runs.
Supported: ``kdim == vdim == embed_dim`` (packed weights), no ``bias_k``/``bias_v``, no
``add_zero_attn``; other configurations are left out (and reported by the coverage check).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention_forward", "patched_attention", "supported"]

Tap = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.MultiheadAttention`` that :func:`attention_forward` covers."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module._qkv_same_embed_dim
        and module.in_proj_weight is not None
        and module.bias_k is None
        and not module.add_zero_attn
    )


def _mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    is_causal: bool,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The additive mask ``(n, H, L, S)`` (broadcastable), or None."""
    n, heads, length, source = shape

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, -math.inf)
        return m.to(dtype)

    total: torch.Tensor | None = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        m = additive(attn_mask)
        total = m if m.ndim == 2 else m.reshape(n, heads, length, source)
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).reshape(n, 1, 1, source)
        total = kp if total is None else total + kp
    return total


def attention_forward(
    module: nn.MultiheadAttention,
    tap: Tap | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``module(query, key, value, ...)`` written out (see the module docstring).

    ``tap(module, input, output)`` records each call of the packed projection and returns the
    output to continue with (None: nothing is recorded).
    """
    if query.ndim != 3:
        raise ValueError(
            f"nn.MultiheadAttention got an unbatched query of shape {tuple(query.shape)}; "
            "per-layer capture needs batched (n, L, E) or (L, n, E) inputs."
        )
    self_attention = query is key and key is value
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, heads = module.embed_dim, module.num_heads
    weight, bias = module.in_proj_weight, module.in_proj_bias

    def project(x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        return out if tap is None else tap(module, x, out)

    if self_attention:
        q, k, v = project(query).chunk(3, dim=-1)
    else:
        q = project(query)[..., :e]
        k = project(key)[..., e : 2 * e]
        v = project(value)[..., 2 * e :]
    n, length, source = q.shape[0], q.shape[1], k.shape[1]
    head = e // heads
    q, k, v = (t.reshape(n, -1, heads, head).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(head)
    mask = _mask(
        attn_mask, key_padding_mask, is_causal, (n, heads, length, source), q.dtype, q.device
    )
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if module.training and module.dropout > 0:
        weights = F.dropout(weights, module.dropout)
    attended = (weights @ v).transpose(1, 2).reshape(n, length, e)
    out = module.out_proj(attended)
    if not module.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(1) if average_attn_weights else weights


@contextmanager
def patched_attention(model: nn.Module, taps: dict[int, Tap]) -> Iterator[None]:
    """Within the block, supported attention modules of ``model`` run :func:`attention_forward`.

    ``taps`` maps ``id(module)`` to the tap recording that module's packed projection.
    """
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            if supported(module):
                tap = taps.get(id(module))

                def forward(*args: Any, _m: Any = module, _t: Any = tap, **kwargs: Any) -> Any:
                    return attention_forward(_m, _t, *args, **kwargs)

                module.forward = forward
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
