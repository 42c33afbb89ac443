"""Growing a top-k store: ``append_train`` of 10% more train points against a rebuild (issue 23).

A briefly trained MLP (:func:`bench_topk.trained_mlp`: Gaussian-mixture data, 10 classes, 10%
train labels flipped), fitted once with ``ProjectedInfluence(projection_dim=256,
preconditioner="identity")`` on the first ``n_train`` points; a float32 store (blocks
``500 x 4096``) whose top-k array (``k`` best train points per test point) is filled. Then,
each timed:

* ``append``: ``arr.append_train(new)`` with ``--frac`` more train points, then
  ``tk.fill()`` (the stored rows are kept as a base and brought up to date by scanning only the
  new points: new train factors, one product with the stored test factors per block);
* ``rebuild``: a new store over all the train points with the same fitted model (the same
  curvature: the appended points are not refitted in either case), and its top-k array filled
  from scratch.

The target is ``append / rebuild <= 0.15``; the appended top-k must equal the rebuilt one
(indices exactly, values exactly). Run from the repository root::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/large/bench_append.py --n-train 100000

writes ``benchmarks/results/append.json`` and its section of RESULTS.md (``--no-write``: print
only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_topk import store_bytes, timed, trained_mlp  # noqa: E402
from harness import machine_info  # noqa: E402
from results_md import (  # noqa: E402
    add_output_args,
    fmt_t,
    measure_and_save,
    record_head,
    table,
    yes_no,
)

import infl_array as ia  # noqa: E402
from infl_array.torch import ProjectedInfluence  # noqa: E402

SECTION = "## Top-k at scale: append_train against a rebuild"
TARGET = 0.15


def top_k_store(path: Path, infl: Any, test: Any, train: Any, args: Any) -> tuple[Any, Any]:
    """A new store over ``train`` and its filled top-k array."""
    arr = ia.InfluenceArray.create(
        path, infl, test=test, train=train, block_shape=tuple(args.block), dtype="float32"
    )
    tk = arr.top_k_array(args.k)
    tk.fill(progress=False)
    return arr, tk


def append_and_fill(arr: Any, new: Any, k: int) -> Any:
    """``arr.append_train(new)``, then the top-k array brought up to date."""
    arr.append_train(new)
    tk = arr.top_k_array(k)
    tk.fill(progress=False)
    return tk


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build, append, rebuild; the timings, bytes and the comparison of the answers."""
    n_new = round(args.n_train * args.frac)
    n_all = args.n_train + n_new
    model, train_all, test, _ = trained_mlp(n_all, args.n_test, args.dim, args.hidden, n_all)
    old = tuple(t[: args.n_train] for t in train_all)
    new = tuple(t[args.n_train :] for t in train_all)
    infl = ProjectedInfluence(
        model, nn.functional.cross_entropy, 1e-3, args.projection_dim, "identity", batch_size=512
    )
    out: dict[str, Any] = {
        "n_train": args.n_train,
        "n_new": n_new,
        "n_test": args.n_test,
        "k": args.k,
        "projection_dim": args.projection_dim,
        "block": list(args.block),
    }
    _, out["fit_s"] = timed(lambda: infl.fit(old))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        (arr, _), out["build_s"] = timed(
            lambda: top_k_store(Path(tmp) / "a", infl, test, old, args)
        )
        out["build_bytes"] = store_bytes(Path(tmp) / "a")
        tk, out["append_s"] = timed(lambda: append_and_fill(arr, new, args.k))
        out["append_train_factors"] = tk.stats.train_factors
        out["append_row_blocks"] = tk.stats.row_blocks_computed
        out["append_blocks_scanned"] = tk.stats.blocks_read + tk.stats.blocks_computed
        (_, again), out["rebuild_s"] = timed(
            lambda: top_k_store(Path(tmp) / "b", infl, test, train_all, args)
        )
        out["rebuild_blocks_scanned"] = again.stats.blocks_read + again.stats.blocks_computed
        got, want = tk.indices[:], again.indices[:]
        values, expected = tk.values[:], again.values[:]
    out["same_indices"] = bool(np.array_equal(got, want))
    out["same_values"] = bool(np.array_equal(values, expected))
    out["max_value_diff"] = float(np.max(np.abs(values - expected)))
    out["ratio"] = out["append_s"] / out["rebuild_s"]
    return out


def render(record: Mapping[str, Any]) -> str:
    """The section of RESULTS.md from the record alone."""
    d = record["data"]
    rows = [
        ["fit (once, on the first n_train points)", fmt_t(d["fit_s"]), ""],
        [f"build: create + top-k array filled, {d['n_train']:,} train", fmt_t(d["build_s"]), ""],
        [f"append_train of {d['n_new']:,} + top-k updated", fmt_t(d["append_s"]), ""],
        [f"rebuild over {d['n_train'] + d['n_new']:,} train (same fit)", fmt_t(d["rebuild_s"]), ""],
        [
            f"append / rebuild (target <= {TARGET:.0%})",
            f"{d['ratio']:.1%}",
            yes_no(d["ratio"] <= TARGET),
        ],
    ]
    same = d["same_indices"] and d["same_values"]
    lines = [
        *record_head(record),
        "",
        f'`ProjectedInfluence(projection_dim={d["projection_dim"]}, preconditioner="identity")` '
        f"on a briefly trained MLP, {d['n_test']:,} test points, top-{d['k']} train points per "
        f"test point, float32 store, blocks {d['block'][0]} x {d['block'][1]}.",
        "",
        *table(["step", "time", "met"], rows, align="lrl"),
        "",
        f"The append computed {d['append_train_factors']} train factor block(s) (the new "
        "points and the old partial last block) and scanned "
        f"{d['append_blocks_scanned']} matrix blocks in memory against the rebuild's "
        f"{d['rebuild_blocks_scanned']}; no matrix block was stored. Updated top-k equal to the "
        f"rebuilt one: {yes_no(same)} (indices identical: {d['same_indices']}, largest value "
        f"difference {d['max_value_diff']:.3g}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--frac", type=float, default=0.1, help="appended / n_train")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--projection-dim", type=int, default=256)
    parser.add_argument("--block", type=int, nargs=2, default=(500, 4096))
    add_output_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    measure_and_save(
        "append",
        SECTION,
        "large/bench_append.py",
        measure,
        args,
        lambda: machine_info(["torch", "zarr", "numpy"]),
    )


if __name__ == "__main__":
    main()
