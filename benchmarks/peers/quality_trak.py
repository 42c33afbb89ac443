"""TRAK (``traker==0.3.2``) on a quality case; runs in ``.venv-trak``.

One checkpoint (the same trained model as everyone else; TRAK usually averages an ensemble of
independently trained models, which is not the same trained model), task
``"image_classification"`` (our models take the flat 64-feature images; its model output is
the correct-class margin, and its train side is weighted by ``1 - p_y``), on CPU: TRAK's
``BasicProjector`` with a normal projection (the CUDA projector needs a GPU) to
``settings["trak_proj_dim"]`` dimensions, no half precision. Two variants: ``TRAK`` with
``lambda_reg = n_train * regularization``, the others' damping in TRAK's scale (its ``X^T X``
sums over the train points, and its features ``P^T g / sqrt(n_params)`` with a standard normal
``P`` keep inner products on average), and ``TRAK undamped`` with TRAK's default
``lambda_reg = 0``. TRAK computes in float32, so the model and data are cast to float32. Scores:
``finalize_scores`` transposed to ``(n_test, n_train)``; positive = helpful (raises the test
margin), infl_array's sign. Self-influence: the noisy train set is featurized, the detection
points are scored as targets, and each point's score against itself is kept.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from typing import Any

import numpy as np
import quality_common as common
import torch
from trak import TRAKer

warnings.filterwarnings("ignore")
BATCH = 100


def _batches(data: common.Data) -> list[list[torch.Tensor]]:
    x, y = data
    return [[x[s : s + BATCH], y[s : s + BATCH]] for s in range(0, len(y), BATCH)]


def _featurized(
    model: torch.nn.Module, train: common.Data, s: dict[str, Any], tmp: str, damped: bool
) -> Any:
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=len(train[1]),
        save_dir=tmp,
        device="cpu",
        proj_dim=s["trak_proj_dim"],
        use_half_precision=False,
        logging_level=logging.ERROR,
        lambda_reg=len(train[1]) * s["regularization"] if damped else 0.0,
    )
    traker.load_checkpoint(model.state_dict(), model_id=0)
    for batch in _batches(train):
        traker.featurize(batch=batch, num_samples=len(batch[1]))
    traker.finalize_features()
    return traker


def _scores(traker: Any, model: torch.nn.Module, targets: common.Data) -> np.ndarray:
    traker.start_scoring_checkpoint(
        exp_name="quality",
        checkpoint=model.state_dict(),
        model_id=0,
        num_targets=len(targets[1]),
    )
    for batch in _batches(targets):
        traker.score(batch=batch, num_samples=len(batch[1]))
    return common.as_numpy(traker.finalize_scores(exp_name="quality")).T  # (targets, train)


def _float32(model: torch.nn.Module, data: common.Data) -> tuple[torch.nn.Module, common.Data]:
    return model.float(), (data[0].float(), data[1])


def _method(damped: bool) -> common.Method:
    def compute(
        model: torch.nn.Module, train: common.Data, test: common.Data, s: dict[str, Any]
    ) -> tuple[np.ndarray, float, float]:
        model, train = _float32(model, train)
        test = (test[0].float(), test[1])
        with tempfile.TemporaryDirectory() as tmp:
            traker, fit_s = common.timed(lambda: _featurized(model, train, s, tmp, damped))
            scores, matrix_s = common.timed(lambda: _scores(traker, model, test))
        return scores, fit_s, matrix_s

    def self_compute(
        model: torch.nn.Module, train: common.Data, detect: np.ndarray, s: dict[str, Any]
    ) -> tuple[np.ndarray, float]:
        model, train = _float32(model, train)

        def run() -> np.ndarray:
            with tempfile.TemporaryDirectory() as tmp:
                traker = _featurized(model, train, s, tmp, damped)
                scores = _scores(traker, model, (train[0][detect], train[1][detect]))
            return scores[np.arange(len(detect)), detect]

        return common.timed(run)

    return compute, self_compute


if __name__ == "__main__":
    common.main("TRAK", {"TRAK": _method(damped=True), "TRAK undamped": _method(damped=False)})
