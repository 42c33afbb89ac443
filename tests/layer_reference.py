"""Per-sample gradients in the per-layer backends' layout, by plain autograd (independent of
the library's capture): one backward pass per sample, each covered parameter's ``.grad``
rearranged as the layer's ``(d_out, width_in)`` matrix.

* ``linear``, ``mha_in``: the weight ``(d_out, d_in)`` as it is, then the bias column;
* ``conv1d`` (``transformers``' ``Conv1D``, weight ``(d_in, d_out)``): the weight transposed;
* ``embedding`` (weight ``(vocab, width)``): the weight transposed, ``(width, vocab)``;
* ``module``: every covered parameter flattened, concatenated (one column).

A tied weight has one ``.grad``: the sum over its uses, which is what the layer must give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def layout_grads(
    model: nn.Module,
    layers: Sequence[Any],
    loss: Callable[..., torch.Tensor],
    x: Any,
    y: torch.Tensor,
    call: Callable[[nn.Module, Any], Any] | None = None,
) -> torch.Tensor:
    """``(n, sum of n_params)``: per-sample gradients, layers in order (see module docstring)."""
    params = dict(model.named_parameters())
    rows = []
    n = y.shape[0]
    for i in range(n):
        model.zero_grad()
        xi = {k: v[i : i + 1] for k, v in x.items()} if isinstance(x, dict) else x[i : i + 1]
        out = call(model, xi) if call is not None else model(xi)
        out = getattr(out, "logits", out)
        loss(out, y[i : i + 1]).backward()
        parts = []
        for spec in layers:
            grads = [params[name].grad for name in spec.parameter_names]
            grads = [
                torch.zeros_like(params[n_]) if g is None else g
                for n_, g in zip(spec.parameter_names, grads, strict=True)
            ]
            if spec.kind == "module":
                parts.append(torch.cat([g.reshape(-1) for g in grads]))
                continue
            weight = grads[0].T if spec.kind in ("conv1d", "embedding") else grads[0]
            weight = weight.reshape(spec.d_out, -1)
            if spec.has_bias:
                weight = torch.cat([weight, grads[1][:, None]], dim=1)
            parts.append(weight.reshape(-1))
        rows.append(torch.cat(parts))
    model.zero_grad()
    return torch.stack(rows)


@contextmanager
def float32_default() -> Iterator[None]:
    """Build models under the float32 default dtype (another test module may set float64 at
    import), so that their random initial values do not depend on the test order."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
