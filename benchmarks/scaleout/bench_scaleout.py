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
3. S3: the HTTP requests a fill makes per block, and a fresh handle's reads of one block row,
   on a local moto S3 server, counted from the server's request log.
4. ``MALLOC_TRIM_THRESHOLD_=65536`` (what dask's nanny sets for its workers): CPU seconds of CG
   test factors in a fresh process with it and without it, 3 times each, alternating.
5. A paper estimate for 100,000 x 10,000,000 on 64 workers from the measured per-sample and
   per-block costs of (1) (rendered from the record's unit costs).

The measurements go to ``benchmarks/results/scaleout.json`` (``results_md.save_result``); the
section "Scale-out (issue 11)" of ``benchmarks/RESULTS.md`` is rendered from it by
``scaleout_report.render``.
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
from scaleout_parts import (
    concurrent_fillers,
    fill_mode,
    malloc_child,
    malloc_trim_cpu,
    s3_requests,
)
from scaleout_report import SECTION
from speed_models import make_problem, setup_torch

CG_SETTINGS = {"regularization": 1.0, "rtol": 1e-4, "atol": 1e-6}
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


def fitted_backend(prob: dict[str, Any]) -> Any:
    """CG on the Hessian of the first ``n_fit`` train points (regularization 1.0)."""
    import torch

    from infl_array.torch import CgInfluence

    n_fit = prob["n_fit"]
    fit_data = (prob["train"][0][:n_fit], prob["train"][1][:n_fit])
    backend = CgInfluence(prob["model"], torch.nn.functional.cross_entropy, **CG_SETTINGS,
                          batch_size=n_fit).fit(fit_data)  # fmt: skip
    return backend.prepare()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller store")
    parser.add_argument("--malloc-child", help=argparse.SUPPRESS)
    results_md.add_output_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.malloc_child:
        malloc_child(args.malloc_child)
        return 0
    setup_torch()
    load_start = results_md.load_now()
    info = machine_info(["torch", "zarr", "dask", "distributed", "moto"])
    t = Timer()
    prob = problem(args.quick)
    backend = fitted_backend(prob)
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
        log("3. S3 requests")
        s3 = s3_requests(work / "s3", 64, (16, 16))
        log(f"   {s3}")
        log("4. MALLOC_TRIM_THRESHOLD_ (dask's worker setting) against a plain process")
        rows = 32 if args.quick else 64
        malloc = malloc_trim_cpu(backend, prob["test"], rows, work / "malloc.pkl", 3)
        log(f"   {malloc}")
    costs = unit_costs(backend, prob)
    keep = ("n_test", "n_train", "block", "n_params", "n_fit")
    data = {
        "quick": args.quick,
        "problem": {k: prob[k] for k in keep} | {"cg": CG_SETTINGS},
        "modes": modes,
        "fillers": fillers,
        "s3": s3,
        "malloc_trim": malloc,
        "unit_costs": costs,
    }
    results_md.save_result(
        "scaleout",
        SECTION,
        "scaleout/scaleout_report.py:render",
        data,
        args,
        script="scaleout/bench_scaleout.py",
        argv=argv,
        wall_s=t.lap(),
        machine=info,
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
