"""EkfacInfluence on the 1e7 ladder CNN with and without the flush-to-zero helper thread.

``python benchmarks/micro/subnormal_micro.py [--fit 512] [--test 64] [--threads 2]`` (the model
and data of ``bench_large.py --sizes 1e7 --n-train 10000 --n-test 1000``, which makes them once).

Times ``EkfacInfluence(update_diagonal=True, fisher_type="empirical")`` fit on the first
``--fit`` train points and its test factors of ``--test`` test points, side by side in one
process: in the caller's thread (subnormal numbers computed the slow way) and as the library
runs them, in its helper thread with flush-to-zero on (``infl_array.torch.layerwise.subnormal``).
Prints both, their ratio and the largest difference of the test factors relative to their largest
value.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import load

import infl_array.torch.layerwise.subnormal as subnormal
from infl_array.torch import EkfacInfluence


def run(
    model: torch.nn.Module, data: dict, a: argparse.Namespace
) -> tuple[float, float, torch.Tensor]:
    infl = EkfacInfluence(
        model, F.cross_entropy, 1e-3, update_diagonal=True, fisher_type="empirical", batch_size=256
    )
    start = time.perf_counter()
    infl.fit((data["x_train"][: a.fit], data["y_train"][: a.fit]))
    fit = time.perf_counter() - start
    start = time.perf_counter()
    factors = infl.test_factors(data["x_test"][: a.test], data["y_test"][: a.test])
    return fit, time.perf_counter() - start, factors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", type=int, default=512)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, data = load("1e7", 10_000, 1000)
    helper = run(model, data, a)
    on_cpu = subnormal._on_cpu
    subnormal._on_cpu = lambda owner: False  # type: ignore[assignment]  # run where called
    try:
        caller = run(model, data, a)
    finally:
        subnormal._on_cpu = on_cpu  # type: ignore[assignment]
    diff = float((helper[2] - caller[2]).abs().max() / caller[2].abs().max())
    print(
        f"fit on {a.fit} points: caller's thread {caller[0]:.1f} s, helper {helper[0]:.1f} s "
        f"({caller[0] / helper[0]:.1f}x)"
    )
    print(
        f"test factors of {a.test} points: caller's thread {caller[1]:.1f} s, helper "
        f"{helper[1]:.1f} s ({caller[1] / helper[1]:.1f}x); max rel. diff {diff:.1e}"
    )


if __name__ == "__main__":
    main()
