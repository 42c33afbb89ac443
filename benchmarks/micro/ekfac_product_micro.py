"""EkfacInfluence's compact-layer product, step by step, at the 1e7 ladder CNN's widest layer.

``python benchmarks/micro/ekfac_product_micro.py [--n-test 20] [--chunk 1000] [--threads 2]
[--tiny]``

A Linear layer that sees one position per sample keeps its train side compact (input ``a`` and
output gradient ``g``); its influence against a test row's preconditioned gradient ``T`` is
``g^T T a``. ``EkfacInfluence._compact_product`` takes ``P = T^T g`` for a chunk of train rows
with one matrix product, ``(n_test, width_in, chunk)``, then contracts ``P`` with ``a``. This
times that matrix product and two ways of the contraction, side by side in one process: the
``einsum("tsc,cs->tc")`` used before and the in-place multiply and sum used now. Prints the
best of three for each, and the multiply-adds per second of the matrix product.

``--tiny``: the same matrix product with every value scaled by 1e-20 (the gradients of a
confident model), whose products fall below float32's normal range, as is and after
``infl_array.torch.layerwise.underflow.normalized_rows`` (what ``EkfacInfluence`` does now).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from infl_array.torch.layerwise.underflow import normalized_rows


def best(f: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="also time values around 1e-20")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    d_out, width_in = 4096, 2049  # Linear(2048, 4096) of the 1e7 CNN, bias column included
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(a.n_test, d_out, width_in, generator=gen).transpose(1, 2)
    g = torch.randn(a.chunk, d_out, generator=gen)
    x = torch.randn(a.chunk, width_in, generator=gen)
    partial = torch.matmul(t, g.T)
    old = torch.einsum("tsc,cs->tc", partial, x)
    new = partial.clone().mul_(x.T).sum(1)
    err = float((old - new).abs().max() / old.abs().max())
    mm = best(lambda: torch.matmul(t, g.T))
    ein = best(lambda: torch.einsum("tsc,cs->tc", partial, x))
    mul = best(lambda: partial.clone().mul_(x.T).sum(1))
    clone = best(lambda: partial.clone())
    macs = a.n_test * d_out * width_in * a.chunk
    print(f"n_test {a.n_test}, chunk {a.chunk}, layer {d_out} x {width_in}, {a.threads} threads")
    print(f"matmul P = T^T g:        {mm:.3f} s ({macs / mm / 1e9:.1f} GMAC/s)")
    print(f"einsum tsc,cs->tc:       {ein:.3f} s")
    print(f"in-place multiply + sum: {max(mul - clone, 0.0):.3f} s (clone for the timing excluded)")
    speedup = (mm + ein) / (mm + mul - clone)
    print(f"layer product, before/after: {speedup:.2f}x; max rel. diff {err:.1e}")
    if a.tiny:
        tiny_t, tiny_g = t * 1e-20, g * 1e-20
        raw = best(lambda: torch.matmul(tiny_t, tiny_g.T), repeat=1)
        flat, _ = normalized_rows(tiny_t.reshape(a.n_test, -1))
        norm_t = flat.reshape(a.n_test, d_out, width_in).transpose(1, 2)
        norm_g, _ = normalized_rows(tiny_g)
        normal = best(lambda: torch.matmul(norm_t, norm_g.T))
        print(f"values ~1e-20: matmul as is {raw:.3f} s, normalized rows {normal:.3f} s")


if __name__ == "__main__":
    main()
