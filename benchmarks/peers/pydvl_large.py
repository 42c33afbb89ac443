"""pyDVL 0.10 on a ladder CNN (runs in .venv-pydvl, built by ``bash .ci/pydvl_env.sh``).

Usage: ``.venv-pydvl/bin/python benchmarks/peers/pydvl_large.py '<json>'`` with keys
``size, n_train, n_test, rows, reg, maxiter, threads, batch, budget_s, out``.

* ``EkfacInfluence``: fitted on the CNN; pyDVL 0.10 supports ``nn.Linear`` layers only, so this
  records the exception it raises (its type and message).
* ``CgInfluence``: fitted, then the influences of up to ``rows`` test points against all train
  points with at most ``maxiter`` CG iterations per right-hand side (not necessarily
  converged), through pyDVL's batched calculator as its docs recommend for data that do not fit
  in memory (``SequentialInfluenceCalculator``: ``influence_factors`` of the test rows, then
  ``influences_from_factors`` against the train loader in batches of ``batch``), not
  ``influences()`` on all points at once.

A time limit keeps it from eating the run: the test rows' factors (one CG solve per row; pyDVL
solves the right-hand sides one after another, ``solve_simultaneously=False``, its default) are
computed one row at a time, each timed (``solve_rows``), and no further row is started once
``budget_s`` seconds have passed since the start of the first (at least one row always runs);
then the products of the rows done against all train points (``products``: one pass over the
train loader). The driver extrapolates the full matrix from these (labelled an estimate, and a
lower bound as CG stops at ``maxiter``). The timings so far are written after every phase, so a
run cut off by the driver's hard timeout still reports what it finished.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from pydvl.influence import InfluenceMode, SequentialInfluenceCalculator
from pydvl.influence.torch import CgInfluence, EkfacInfluence
from pydvl.influence.torch.util import NestedTorchCatAggregator, TorchCatAggregator
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import Timer, load, worker_args, write_result


def main() -> None:
    args = worker_args()
    torch.set_num_threads(args["threads"])
    warnings.simplefilter("ignore")
    model, data = load(args["size"], args["n_train"], args["n_test"])
    x, y = data["x_train"], data["y_train"]
    loader = DataLoader(TensorDataset(x, y), batch_size=args["batch"])
    result: dict = {}
    try:
        EkfacInfluence(model, hessian_regularization=args["reg"]).fit(loader)
        result["ekfac"] = "fitted"
    except Exception as exc:  # what pyDVL says about a Conv2d model
        result["ekfac"] = f"{type(exc).__name__}: {exc}"
    timer = Timer()
    cg = CgInfluence(
        model, F.cross_entropy, args["reg"], maxiter=args["maxiter"], warn_on_max_iteration=False
    )
    with timer("fit"):
        cg.fit(loader)
    config = {"rows_wanted": args["rows"], "maxiter": args["maxiter"], "batch": args["batch"]}
    config["budget_s"] = args["budget_s"]
    calc = SequentialInfluenceCalculator(cg)
    factors, solve_rows = [], []
    start = time.perf_counter()
    for i in range(args["rows"]):  # one CG solve per row, each timed, until the time limit
        row = DataLoader(TensorDataset(data["x_test"][i : i + 1], data["y_test"][i : i + 1]))
        with timer("solve"):
            t0 = time.perf_counter()
            factors.append(calc.influence_factors(row).compute(aggregator=TorchCatAggregator()))
            solve_rows.append(time.perf_counter() - t0)
        partial = {"times": timer.times, "solve_rows": solve_rows, "rows": len(factors)}
        write_result(args["out"], {**result, **config, **partial, "partial": True}, None)
        if time.perf_counter() - start > args["budget_s"]:
            break
    with timer("products"):
        lazy = calc.influences_from_factors([torch.cat(factors)], loader, mode=InfluenceMode.Up)
        scores = lazy.compute(aggregator=NestedTorchCatAggregator()).detach().numpy()
    done = {"times": timer.times, "solve_rows": solve_rows, "rows": len(factors)}
    write_result(args["out"], {**result, **config, **done}, scores)


if __name__ == "__main__":
    main()
