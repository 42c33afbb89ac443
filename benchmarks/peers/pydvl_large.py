"""pyDVL 0.10 on a ladder CNN (runs in .venv-pydvl, built by ``bash .ci/pydvl_env.sh``).

Usage: ``.venv-pydvl/bin/python benchmarks/peers/pydvl_large.py '<json>'`` with keys
``size, n_train, n_test, rows, reg, maxiter, threads, batch, out``.

* ``EkfacInfluence``: fitted on the CNN; pyDVL 0.10 supports ``nn.Linear`` layers only, so this
  records the exception it raises (its type and message).
* ``CgInfluence``: fitted, then the influences of the first ``rows`` test points against all
  train points with at most ``maxiter`` CG iterations per right-hand side (``solve`` time;
  not necessarily converged: a lower bound of a converged solve), through pyDVL's batched
  calculator as its docs recommend for data that do not fit in memory
  (``SequentialInfluenceCalculator``: ``influence_factors`` of the test rows, then
  ``influences_from_factors`` against the train loader in batches of ``batch``), not
  ``influences()`` on all points at once.
"""

from __future__ import annotations

import sys
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
    xt, yt = data["x_test"][: args["rows"]], data["y_test"][: args["rows"]]
    test_loader = DataLoader(TensorDataset(xt, yt), batch_size=args["rows"])
    calc = SequentialInfluenceCalculator(cg)
    with timer("solve"):
        factors = calc.influence_factors(test_loader).compute(aggregator=TorchCatAggregator())
    with timer("products"):
        lazy = calc.influences_from_factors([factors], loader, mode=InfluenceMode.Up)
        scores = lazy.compute(aggregator=NestedTorchCatAggregator()).detach().numpy()
    result.update(
        times=timer.times, rows=args["rows"], maxiter=args["maxiter"], batch=args["batch"]
    )
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
