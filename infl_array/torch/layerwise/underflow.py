"""Matrix products of tiny factors without subnormal numbers (a CPU speed trap).

The gradients of a confident model are tiny (a well-classified sample's loss gradient can be
1e-20 and less), and a float32 product of two tiny numbers underflows into the subnormal
range, where x86 CPUs take a microcode assist per operation unless flush-to-zero is on (it is
off by default, and ``torch.set_flush_denormal`` sets it for the calling thread only, not for
torch's worker threads). Measured here: a ``(20 x 2049 x 4096) @ (4096 x 128)`` float32 product
took 28 s with values around 1e-20 against 0.18 s around 1
(``benchmarks/micro/ekfac_product_micro.py --tiny``).

:func:`normalized_rows` writes a matrix as ``scale[:, None] * g`` with ``scale`` a power of two
per row (so scaling is exact) and every row of ``g`` at most 1 in absolute value, its largest
entry at least 1/2, and every entry below ``2**-TRIM_BITS`` of 1 set to zero. A product of two
such entries is either 0 or at least ``2**-(2 * TRIM_BITS + 2)``, above float32's smallest
normal number ``2**-126``, so the matrix product of two normalized factors never goes subnormal;
the scales are applied to its (much smaller) result. The trimmed entries are below
``2**-61`` of their row's largest one: in any sum they enter, far below float32's rounding
(``2**-24`` relative) of that row's terms. float64 (smallest normal ``2**-1022``) is left as is.
"""

from __future__ import annotations

import torch

__all__ = ["TRIM_BITS", "needs_normalizing", "normalized_rows"]

TRIM_BITS = 61
"""Entries below ``2**-TRIM_BITS`` of their row's power-of-two scale are set to zero."""


def needs_normalizing(t: torch.Tensor) -> bool:
    """Whether ``t`` is float32 or bfloat16 (float32's exponent range; see the docstring)."""
    return t.dtype in (torch.float32, torch.bfloat16)


def normalized_rows(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, scale)`` with ``f ~= scale[:, None] * g`` (see the module docstring).

    ``f``: a ``(n, m)`` float32 or bfloat16 tensor (any strides). ``g`` is a new contiguous
    tensor of ``f``'s dtype, ``scale`` a float32 ``(n,)`` tensor of powers of two (1 for a
    zero row).
    """
    if not needs_normalizing(f):
        raise TypeError(f"normalized_rows takes float32 or bfloat16, got {f.dtype}")
    n = f.shape[0]
    amax = f.abs().amax(dim=1).float() if f.shape[1] else f.new_zeros(n, dtype=torch.float32)
    exponent = torch.frexp(amax).exponent  # amax = mantissa * 2**exponent, mantissa in [0.5, 1)
    scale = torch.where(amax > 0, torch.ldexp(torch.ones_like(amax), exponent), 1.0)
    g = (f / scale[:, None].to(f.dtype)).contiguous()
    g.masked_fill_(g.abs() < 2.0**-TRIM_BITS, 0.0)
    return g, scale
