"""pyDVL 0.10's influence models on a quality case; runs in ``.venv-pydvl`` (numpy<2).

Every model is fitted on a ``DataLoader`` holding the whole train set in ONE batch, so pyDVL's
batch-averaged quantities (the Hessian of CG's and LiSSA's operators, the batches LiSSA cycles
through) are exactly the Hessian of the mean loss over all points that infl_array uses, and
LiSSA is deterministic. Scores: ``model.influences(x_test, y_test, x_train, y_train,
mode=InfluenceMode.Up)`` (positive = helpful, infl_array's convention). Self-influence:
``influence_factors`` of the detection points, then the diagonal of ``influences_from_factors``
against the same points. Settings (regularization, ranks, LiSSA's scale and maxiter) come from
the main script, the same as infl_array's; CG solves all right-hand sides together
(``solve_simultaneously=True``, as ours does; its default solves one at a time, about 10x
slower here) and keeps pyDVL's tolerances (``rtol=1e-4, atol=1e-6``, the same numbers and the same
stopping rule as ours: ``||r|| < max(rtol**2 * ||b||, atol**2)``). LiSSA keeps
``dampen=0`` and ``rtol=1e-4``. ``EkfacInfluence`` supports only ``nn.Linear`` layers in
pyDVL 0.10 (skipped on the CNN) and allocates its Kronecker blocks in float32, so it runs in
float32 (model and data cast).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import quality_common as common
import torch
from pydvl.influence import InfluenceMode
from pydvl.influence.torch import (
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    LissaInfluence,
    NystroemSketchInfluence,
)
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger("pydvl").setLevel(logging.ERROR)
CE = torch.nn.functional.cross_entropy


def _loader(data: common.Data) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=len(data[1]))


def _ekfac_only_linear(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            raise common.Skip(
                f"pyDVL 0.10's EkfacInfluence supports only nn.Linear layers ({name} is Conv2d)"
            )


FACTORIES = {
    "Direct": lambda m, s: DirectInfluence(m, CE, regularization=s["regularization"]),
    "CG": lambda m, s: CgInfluence(
        m, CE, regularization=s["regularization"], solve_simultaneously=True
    ),
    "LiSSA": lambda m, s: LissaInfluence(
        m,
        CE,
        regularization=s["regularization"],
        maxiter=s["lissa_maxiter"],
        scale=s["lissa_scale"],
    ),
    "Arnoldi": lambda m, s: ArnoldiInfluence(
        m, CE, regularization=s["regularization"], rank=s["rank"]
    ),
    "EK-FAC": lambda m, s: EkfacInfluence(
        m, update_diagonal=True, hessian_regularization=s["regularization"]
    ),
    "K-FAC": lambda m, s: EkfacInfluence(
        m, update_diagonal=False, hessian_regularization=s["regularization"]
    ),
    "Nystroem": lambda m, s: NystroemSketchInfluence(
        m, CE, regularization=s["regularization"], rank=s["rank"]
    ),
    "DataInf": lambda m, s: InverseHarmonicMeanInfluence(m, CE, regularization=s["regularization"]),
}


def _fitted(label: str, model: torch.nn.Module, data: common.Data, s: dict[str, Any]) -> Any:
    if label in ("EK-FAC", "K-FAC"):
        _ekfac_only_linear(model)
    torch.manual_seed(0)  # Nystroem's sketch
    return FACTORIES[label](model, s).fit(_loader(data))


def _float32(data: common.Data) -> common.Data:
    return data[0].float(), data[1]


def _method(label: str) -> common.Method:
    # pyDVL 0.10's EkfacInfluence allocates its Kronecker blocks in torch's default float32
    to32 = label in ("EK-FAC", "K-FAC")

    def compute(
        model: torch.nn.Module, train: common.Data, test: common.Data, s: dict[str, Any]
    ) -> tuple[np.ndarray, float, float]:
        if to32:
            model, train, test = model.float(), _float32(train), _float32(test)
        fitted, fit_s = common.timed(lambda: _fitted(label, model, train, s))
        scores, matrix_s = common.timed(
            lambda: fitted.influences(*test, *train, mode=InfluenceMode.Up)
        )
        return common.as_numpy(scores), fit_s, matrix_s

    def self_compute(
        model: torch.nn.Module, train: common.Data, detect: np.ndarray, s: dict[str, Any]
    ) -> tuple[np.ndarray, float]:
        if to32:
            model, train = model.float(), _float32(train)

        def run() -> np.ndarray:
            fitted = _fitted(label, model, train, s)
            x, y = train[0][detect], train[1][detect]
            factors = fitted.influence_factors(x, y)
            full = fitted.influences_from_factors(factors, x, y, mode=InfluenceMode.Up)
            return common.as_numpy(torch.diagonal(full))

        return common.timed(run)

    return compute, self_compute


if __name__ == "__main__":
    common.main("pyDVL", {label: _method(label) for label in FACTORIES})
