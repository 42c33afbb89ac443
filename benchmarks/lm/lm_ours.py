"""infl_array's workers of the language-model benchmark: EK-FAC and projected influence.

Usage: ``python benchmarks/lm/lm_ours.py '<json>'`` with keys ``kind`` (``ekfac`` or
``projected``), ``data`` (the ``.pt`` file of :func:`lm_common.save`), ``threads``,
``damping`` (relative: ``relative_regularization=True``, each layer damped by ``damping``
times its mean curvature eigenvalue), ``projection_dim``, ``batch``, ``store`` and ``out``.

Through the public array, as a user would: the backend is fitted on the train sequences
(``fit``), then ``ia.InfluenceArray.create(...)`` + ``fill()`` computes every block of the
``(n_query, n_train)`` matrix into a zarr store (``fill``) and ``np.asarray(arr)`` reads it
back (``read``). Writes the timings, peak RSS, the covered fraction of the trainable
parameters and the matrix (``.npy``) next to ``out``.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import Timer, load, worker_args, write_result

import infl_array as ia
from infl_array.torch import EkfacInfluence, ProjectedInfluence, causal_lm_loss


def main() -> None:
    args = worker_args()
    model, blob = load(args["data"])
    train, test = blob["train"], blob["test"]
    common = {
        "fisher_type": "empirical",
        "batch_size": args["batch"],
        "relative_regularization": True,
    }
    if args["kind"] == "ekfac":
        infl = EkfacInfluence(
            model, causal_lm_loss, args["damping"], update_diagonal=True, **common
        )
    elif args["kind"] == "projected":
        infl = ProjectedInfluence(
            model, causal_lm_loss, args["damping"], args["projection_dim"], **common
        )
    else:
        raise SystemExit(f"kind must be 'ekfac' or 'projected'; got {args['kind']!r}")
    timer = Timer()
    store = Path(args["store"])
    shutil.rmtree(store, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a PartialCoverageWarning stops the run
        with timer("fit"):
            infl.fit((train, train))
    with timer("fill"):
        arr = ia.InfluenceArray.create(
            store, infl, test=(test, test), train=(train, train), block_shape=(128, 2048)
        )
        arr.fill(progress=False)
    with timer("read"):
        scores = np.asarray(arr)
    shutil.rmtree(store, ignore_errors=True)
    result = {
        "times": timer.times,
        "covered": infl.coverage.fraction,
        "width": getattr(infl, "width", None),
    }
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
