"""infl_array's backends in the attribution-quality benchmark, through the public array API.

:data:`OURS` is the table of backends: one line each, ``(label, class name in
infl_array.torch, settings)``. A class that ``infl_array.torch`` does not have (yet) is skipped
with a printed note. Run by ``benchmarks/quality/quality.py`` as a worker in a fresh process, with
the same command line and output files as the peer scripts (``benchmarks/peers/quality_common.py``),
so ours and the peers are timed alike. Each method runs as a user would run it:

* LDS and leave-one-out: ``cls(clean_model, cross_entropy, regularization=...).fit(train)``,
  then ``ia.InfluenceArray.create(store, backend, test=..., train=..., dtype="float64")`` and a
  full numpy read ``arr[:, :]``;
* detection: the same fitted on the noisy model and labels, an array whose train (and test)
  points are the detection points, and ``arr.self_influence()[:]``.

Stores go to a temporary folder, deleted afterwards.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import infl_array as ia

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import quality_common as common

Settings = Callable[[dict[str, Any]], dict[str, Any]]
GN = "gauss_newton"

# label, infl_array.torch class, settings -> keyword arguments beyond (model, loss,
# regularization=); the settings are the run's (benchmarks/quality/quality.py: rank, LiSSA's
# scale...), the same as the peers get. Add a backend: one line.
OURS: list[tuple[str, str, Settings]] = [
    ("Direct", "DirectInfluence", lambda s: {}),
    ("CG", "CgInfluence", lambda s: {"solve_simultaneously": True}),  # block CG, as pyDVL's
    (
        "LiSSA",
        "LissaInfluence",
        lambda s: {"maxiter": s["lissa_maxiter"], "scale": s["lissa_scale"]},
    ),
    ("Arnoldi", "ArnoldiInfluence", lambda s: {"rank": s["rank"]}),
    ("EK-FAC", "EkfacInfluence", lambda s: {"update_diagonal": True}),
    ("K-FAC", "EkfacInfluence", lambda s: {"update_diagonal": False}),
    (
        "EK-FAC empirical",
        "EkfacInfluence",
        lambda s: {"update_diagonal": True, "fisher_type": "empirical"},
    ),
    ("Projected", "ProjectedInfluence", lambda s: {"projection_dim": s["projection_dim"]}),
    ("Nystroem", "NystroemSketchInfluence", lambda s: {"rank": s["rank"]}),
    ("DataInf", "InverseHarmonicMeanInfluence", lambda s: {}),
    # the same with the Gauss-Newton matrix of the loss in place of its Hessian (as TRAK's
    # curvature is positive semi-definite), at the same regularization
    ("Direct GN", "DirectInfluence", lambda s: {"second_order_mode": GN}),
    ("CG GN", "CgInfluence", lambda s: {"solve_simultaneously": True, "second_order_mode": GN}),
    (
        "Nystroem GN",
        "NystroemSketchInfluence",
        lambda s: {"rank": s["rank"], "second_order_mode": GN},
    ),
]


def available(log: Callable[[str], None] = print) -> dict[str, tuple[type, Settings]]:
    """The rows of :data:`OURS` whose class imports, with a printed note for each that does not."""
    import infl_array.torch as backends

    rows = {}
    for label, cls_name, settings in OURS:
        cls = getattr(backends, cls_name, None)
        if cls is None:
            log(f"  note: skipping ours {label}: infl_array.torch has no {cls_name} (not merged)")
            continue
        rows[label] = (cls, settings)
    return rows


def _create(backend: Any, tmp: str, name: str, test: Any, train: Any) -> ia.InfluenceArray:
    n_test, n_train = len(test[1]), len(train[1])
    return ia.InfluenceArray.create(
        Path(tmp) / name,
        backend,
        test=test,
        train=train,
        block_shape=(n_test, n_train),
        dtype="float64",
    )


def _method(cls: type, settings: Settings) -> common.Method:
    def make(model: torch.nn.Module, s: dict[str, Any]) -> Any:
        torch.manual_seed(0)  # Nystroem's sketch: the same draw as pyDVL's worker makes
        return cls(model, F.cross_entropy, regularization=s["regularization"], **settings(s))

    def compute(
        model: torch.nn.Module, train: common.Data, test: common.Data, s: dict[str, Any]
    ) -> tuple[np.ndarray, float, float]:
        backend, fit_s = common.timed(lambda: make(model, s).fit(train))
        with tempfile.TemporaryDirectory() as tmp:
            scores, matrix_s = common.timed(
                lambda: np.asarray(_create(backend, tmp, "clean.zarr", test, train)[:, :])
            )
        return scores, fit_s, matrix_s

    def self_compute(
        model: torch.nn.Module, train: common.Data, detect: np.ndarray, s: dict[str, Any]
    ) -> tuple[np.ndarray, float]:
        def run() -> np.ndarray:
            backend = make(model, s).fit(train)  # fitted on every (noisy) train point
            scored = (train[0][detect], train[1][detect])
            with tempfile.TemporaryDirectory() as tmp:
                arr = _create(backend, tmp, "noisy.zarr", scored, scored)
                return np.asarray(arr.self_influence()[:])

        return common.timed(run)

    return compute, self_compute


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # e.g. LiSSA's ConvergenceWarning at its maxiter
    common.main("ours", {k: _method(*v) for k, v in available().items()})
