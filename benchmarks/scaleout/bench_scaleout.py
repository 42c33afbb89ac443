"""Scale-out: factor work per fill across workers, concurrent fillers, S3 requests (issue 11).

Run from the repository root::

    python benchmarks/scaleout/bench_scaleout.py            # 2,000 x 8,000 CG store (a few minutes)
    python benchmarks/scaleout/bench_scaleout.py --quick    # 400 x 2,000

What it measures, side by side in one run on this machine:

1. One fill of a fresh CG store (MLP ``20 -> 64 -> 3``, blocks (256, 1024)) in this process,
   with ``workers=2`` and on a 2-worker ``LocalCluster``: how many times each train and each
   test sample's factors were computed (the model is wrapped in a protocol object that logs
   every factor call, in every process), wall time and CPU utilisation (CPU seconds of this
   process and every process it started, over wall time x cores; other load on a shared
   machine is not counted, and is reported as the load at start). Then ``to_dask()`` of a fresh
   store computed on the same kind of cluster (each chunk task reads or computes its block).
2. Concurrent fillers: 1 and 4 processes fill one store (100 blocks of a CPU-bound block
   function, BLAS on one thread each) started together: duplicated block computations and wall.
3. S3: the store operations a fill makes per block, and a fresh handle's reads of one block
   row, on a local moto S3 server, counted at zarr's store interface.
4. A paper estimate for 100,000 x 10,000,000 on 64 workers from the measured per-sample and
   per-block costs of (1).

The section "Scale-out (issue 11)" is written to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # fillers compete fairly for the 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))  # speed_models
import results_md
from harness import Timer, log, machine_info, scratch_dir
from scaleout_parts import concurrent_fillers, fill_mode, s3_operations
from speed_models import make_problem, setup_torch

SECTION = "## Scale-out (issue 11)"
MODES = ("here", "workers=2", "cluster", "to_dask")


def problem(quick: bool) -> dict[str, Any]:
    n_train, n_test = (2_000, 400) if quick else (8_000, 2_000)
    prob = make_problem(20, 64, n_train, n_test, seed=2, steps=600, batch=100)
    prob.update(n_train=n_train, n_test=n_test, block=(256, 1024) if not quick else (100, 500))
    prob["n_fit"] = 1_000  # the Hessian of the mean loss over the first 1,000 train points
    return prob


def unit_costs(backend: Any, prob: dict[str, Any]) -> dict[str, float]:
    """Seconds per test sample (a CG solve), per train sample (a gradient), per block product."""
    rows, cols = prob["block"]
    x_te, y_te = prob["test"][0][:rows], prob["test"][1][:rows]
    x_tr, y_tr = prob["train"][0][:cols], prob["train"][1][:cols]
    t = Timer()
    tf = backend.test_factors(x_te, y_te)
    per_test = t.lap() / rows
    trf = backend.train_factors(x_tr, y_tr)
    per_train = t.lap() / cols
    for _ in range(5):
        _ = tf @ trf.T
    return {"test": per_test, "train": per_train, "product": t.lap() / 5}


def estimate(costs: dict[str, float], prob: dict[str, Any], block_bytes: float) -> list[str]:
    """100,000 x 10,000,000 on 64 workers, from the measured unit costs."""
    n_test, n_train, workers = 100_000, 10_000_000, 64
    rows, cols = 256, 4096
    n_blocks = -(-n_test // rows) * -(-n_train // cols)
    width = prob["n_params"]
    train_s = n_train * costs["train"]
    test_s = n_test * costs["test"]
    product_s = n_blocks * costs["product"] * (rows * cols) / (prob["block"][0] * prob["block"][1])
    factor_gb = (n_train + n_test) * width * 4 / 1e9
    total = train_s + test_s + product_s
    per_block_mb = block_bytes * (rows * cols) / (prob["block"][0] * prob["block"][1]) / 1e6
    return [
        f"- Work: train gradients {train_s / 3600:.1f} CPU-h ({costs['train'] * 1e3:.3f} ms per "
        f"sample), test factors (CG solves) {test_s / 3600:.1f} CPU-h "
        f"({costs['test'] * 1e3:.2f} ms per sample), products {product_s / 3600:.1f} CPU-h for "
        f"{n_blocks:,} blocks of {rows} x {cols}: {total / 3600:.1f} CPU-h in all, "
        f"{total / workers / 3600:.2f} h on {workers} workers at the measured per-core speed, "
        "each factor computed once.",
        f"- Each worker computes {n_train // workers:,} train and {n_test // workers:,} test "
        f"samples' factors (phase 1) and writes them: {factor_gb:,.0f} GB of float32 factors "
        f"for {width:,} parameters (set `factor_disk_budget_bytes` above that; the default 8 GiB "
        "per side would keep only the test side, and train gradients would then be recomputed "
        "per block row group).",
        f"- Phase 2: {n_blocks // workers:,} blocks per worker; each reads the factor blocks of "
        f"its columns (one train block, {n_test // rows} test blocks per column, "
        f"{(cols + n_test) * width * 4 / 1e9:.1f} GB per column) and writes "
        f"{per_block_mb:.1f} MB per block (compressed, as measured), "
        f"{n_blocks * per_block_mb / 1e6:.1f} TB in all.",
    ]


def markdown(modes: list[dict[str, Any]], fillers: list[dict[str, Any]],
             s3: dict[str, Any], est: list[str], prob: dict[str, Any]) -> list[str]:  # fmt: skip
    out = [
        f"### 1. Factor work per fill: {prob['n_test']:,} x {prob['n_train']:,} CG store, "
        f"blocks {prob['block']}, MLP ({prob['n_params']:,} parameters), CG on the Hessian of "
        f"the first {prob['n_fit']:,} train points (regularization 1.0, rtol 1e-4)",
        "",
        "Times each sample's factors were computed (1.00 = once), summed over every process.",
        "",
    ]
    rows = [
        (m["mode"], f"{m['train_x']:.2f}", f"{m['test_x']:.2f}", m["blocks"], m["procs"],
         results_md.fmt_t(m["wall_s"]), f"{m['cpu_util']:.0%}",
         f"{modes[0]['wall_s'] / m['wall_s']:.2f}x")
        for m in modes
    ]  # fmt: skip
    head = ("fill", "train x", "test x", "blocks stored", "processes computing", "wall", "CPU util",
            "speed-up")  # fmt: skip
    out += results_md.table(head, rows, "lrrrrrrr")
    fills = [m for m in modes if m["mode"] != "to_dask"]
    equal = all(m["train_x"] == 1.0 and m["test_x"] == 1.0 for m in fills)
    out += [
        "",
        f"Each factor once per fill, here, with workers=2 and on the cluster (equal counts): "
        f"{results_md.yes_no(equal)}. `to_dask()` promises less (the model reaches each worker "
        "once; chunk tasks run in any order): factor blocks are claimed across processes once "
        "the store keeps their side, so only the first factor block of a side can be computed "
        "by two workers at once.",
    ]
    out += ["", "### 2. Concurrent fillers (100 blocks, CPU-bound block function)", ""]
    rows = [
        (f["fillers"], f["computations"], f["duplicates"],
         f"{f['duplicates'] / f['blocks']:.1%}", " / ".join(map(str, f["written"])),
         results_md.fmt_t(f["wall_s"]), results_md.yes_no(f["complete"]))
        for f in fillers
    ]  # fmt: skip
    head = ("fillers", "computations", "duplicates", "share", "written by each", "wall",
            "complete")  # fmt: skip
    out += results_md.table(head, rows, "rrrrlrl")
    dup = fillers[-1]["duplicates"] / fillers[-1]["blocks"]
    out += ["", f"Target < 5% duplicates with 4 fillers: {results_md.yes_no(dup < 0.05)}."]
    per = {k: v / s3["blocks"] for k, v in sorted(s3["fill"].items())}
    out += [
        "",
        "### 3. S3 store operations (local moto server, counted at zarr's store interface)",
        "",
        f"A fill of {s3['blocks']} blocks: "
        + ", ".join(f"`{k}` {v:.2f}" for k, v in per.items())
        + f" per block ({sum(per.values()):.2f} requests per block). A fresh handle reading one "
        f"block row ({s3['row_blocks']} blocks): "
        + ", ".join(f"`{k}` {v}" for k, v in sorted(s3["read_row"].items()))
        + ".",
        "",
        "### 4. Paper estimate: 100,000 x 10,000,000 on 64 workers",
        "",
        *est,
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller store")
    results_md.add_output_args(parser)
    args = parser.parse_args(argv)
    torch = setup_torch()
    from infl_array.torch import CgInfluence

    info = machine_info(["torch", "zarr", "dask", "distributed"])
    t = Timer()
    prob = problem(args.quick)
    n_fit = prob["n_fit"]
    fit_data = (prob["train"][0][:n_fit], prob["train"][1][:n_fit])
    backend = CgInfluence(prob["model"], torch.nn.functional.cross_entropy, regularization=1.0,
                          rtol=1e-4, atol=1e-6, batch_size=n_fit).fit(fit_data)  # fmt: skip
    backend.prepare()
    modes = []
    with scratch_dir("bench_scaleout") as work:
        for mode in MODES:
            log(f"1. fill {mode}")
            modes.append(fill_mode(prob, backend, mode, work / mode.replace("=", "")))
            log(f"   {modes[-1]}")
        shape = (640, 640)
        fillers = []
        for n in (1, 4):
            log(f"2. {n} concurrent fillers")
            fillers.append(concurrent_fillers(work / f"fillers{n}", n, shape))
            log(f"   {fillers[-1]}")
        log("3. S3 operations")
        s3 = s3_operations(work / "s3", 64, (16, 16))
        log(f"   {s3}")
    costs = unit_costs(backend, prob)
    n_blocks = modes[0]["blocks"]
    est = estimate(costs, prob, modes[0]["bytes"] / n_blocks)
    flags = ["--quick"] if args.quick else []
    lines = results_md.section_head(
        SECTION, results_md.command("scaleout/bench_scaleout.py", flags), info, t.lap()
    )
    lines += ["", *markdown(modes, fillers, s3, est, prob), ""]
    results_md.publish(SECTION, "\n".join(lines), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
