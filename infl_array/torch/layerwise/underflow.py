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

Memory: the result ``g`` is the only allocation of ``f``'s size; the row maxima are a reduction
without a copy, and the division and the trimming run on chunks of rows of at most
:data:`CHUNK_BYTES` (the trimming's temporaries: an absolute value and a mask). Done on the whole
matrix at once they took up to three more copies of it, outside any account (on the
1e6-parameter ladder CNN, 100 test rows of its 615,000-parameter Linear layer: about 700 MiB
beside a 1 GiB ``memory_budget``).
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_BYTES", "TRIM_BITS", "needs_normalizing", "normalized_rows"]

TRIM_BITS = 61
"""Entries below ``2**-TRIM_BITS`` of their row's power-of-two scale are set to zero."""

CHUNK_BYTES = 8 << 20
"""Bytes of the rows :func:`normalized_rows` divides and trims at a time (at least one row)."""


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
    n, m = f.shape
    if m:
        amax = torch.linalg.vector_norm(f, float("inf"), dim=1).float()  # no copy of f
    else:
        amax = f.new_zeros(n, dtype=torch.float32)
    exponent = torch.frexp(amax).exponent  # amax = mantissa * 2**exponent, mantissa in [0.5, 1)
    scale = torch.where(amax > 0, torch.ldexp(torch.ones_like(amax), exponent), 1.0)
    g = torch.empty((n, m), dtype=f.dtype, device=f.device)
    step = max(1, CHUNK_BYTES // max(1, m * f.element_size()))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        part = torch.div(f[rows], scale[rows, None].to(f.dtype), out=g[rows])
        part.masked_fill_(part.abs() < 2.0**-TRIM_BITS, 0.0)
    return g, scale
