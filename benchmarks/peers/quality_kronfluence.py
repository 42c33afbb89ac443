"""Kronfluence 1.0.1's EK-FAC and K-FAC on a quality case; runs in ``.venv-kronfluence``.

Kronfluence tracks every ``nn.Linear`` and ``nn.Conv2d`` (all the parameters of our models).
The task: the train loss is the summed cross-entropy (Kronfluence's requirement; with
``sample=True`` labels drawn from the model's predictive distribution, so the factors estimate
the true Fisher, Kronfluence's default, which for cross-entropy is the Gauss-Newton matrix;
``EK-FAC empirical``: ``use_empirical_fisher=True``, the true labels, no sampling);
the measurement is the summed cross-entropy of the query (test) points, so a score is
``grad l(test)^T (F + lambda*Id)^-1 grad l(train)`` with ``F`` the Kronecker-factored Fisher
of the MEAN loss (Kronfluence divides its covariances by the number of examples) and
``lambda = damping_factor``, the same regularization the others get. Positive = helpful (the
train point lowers the query loss), infl_array's convention. Factors, covariances, scores and
gradients in the case's dtype (float64 for the float64 cases). Self-influence:
``compute_self_scores`` on the detection points, factors fitted on all noisy train points.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from typing import Any

import numpy as np
import quality_common as common
import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore")
logging.getLogger().setLevel(logging.ERROR)
BATCH = 512


class Classification(Task):
    """Cross-entropy classification on ``(x, y)`` batches."""

    def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> Any:
        x, y = batch
        logits = model(x)
        if sample:
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
        return F.cross_entropy(logits, y, reduction="sum")

    def compute_measurement(self, batch: Any, model: torch.nn.Module) -> Any:
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def _args(
    strategy: str, s: dict[str, Any], empirical: bool
) -> tuple[FactorArguments, ScoreArguments]:
    dtype = getattr(torch, s["dtype"])
    factor_args = FactorArguments(
        strategy=strategy,
        use_empirical_fisher=empirical,
        activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype,
        per_sample_gradient_dtype=dtype,
        lambda_dtype=dtype,
    )
    score_args = ScoreArguments(
        damping_factor=s["regularization"],
        per_sample_gradient_dtype=dtype,
        precondition_dtype=dtype,
        score_dtype=dtype,
    )
    return factor_args, score_args


def _analyzer(model: torch.nn.Module, tmp: str) -> Analyzer:
    task = Classification()
    return Analyzer(
        analysis_name="quality",
        model=prepare_model(model, task),
        task=task,
        cpu=True,
        disable_tqdm=True,
        output_dir=tmp,
    )


def _method(strategy: str, empirical: bool = False) -> common.Method:
    def compute(
        model: torch.nn.Module, train: common.Data, test: common.Data, s: dict[str, Any]
    ) -> tuple[np.ndarray, float, float]:
        factor_args, score_args = _args(strategy, s, empirical)
        train_ds, test_ds = TensorDataset(*train), TensorDataset(*test)
        with tempfile.TemporaryDirectory() as tmp:
            analyzer = _analyzer(model, tmp)
            torch.manual_seed(0)  # the sampled labels of the true Fisher
            _, fit_s = common.timed(
                lambda: analyzer.fit_all_factors(
                    "factors",
                    dataset=train_ds,
                    per_device_batch_size=BATCH,
                    factor_args=factor_args,
                    overwrite_output_dir=True,
                )
            )

            def scores() -> Any:
                analyzer.compute_pairwise_scores(
                    "scores",
                    "factors",
                    query_dataset=test_ds,
                    train_dataset=train_ds,
                    per_device_query_batch_size=BATCH,
                    per_device_train_batch_size=BATCH,
                    score_args=score_args,
                    overwrite_output_dir=True,
                )
                return analyzer.load_pairwise_scores("scores")["all_modules"]

            values, matrix_s = common.timed(scores)
        return common.as_numpy(values), fit_s, matrix_s

    def self_compute(
        model: torch.nn.Module, train: common.Data, detect: np.ndarray, s: dict[str, Any]
    ) -> tuple[np.ndarray, float]:
        factor_args, score_args = _args(strategy, s, empirical)
        train_ds = TensorDataset(*train)

        def run() -> Any:
            with tempfile.TemporaryDirectory() as tmp:
                analyzer = _analyzer(model, tmp)
                torch.manual_seed(0)
                analyzer.fit_all_factors(
                    "factors",
                    dataset=train_ds,
                    per_device_batch_size=BATCH,
                    factor_args=factor_args,
                    overwrite_output_dir=True,
                )
                analyzer.compute_self_scores(
                    "self",
                    "factors",
                    train_dataset=train_ds,
                    train_indices=[int(i) for i in detect],
                    per_device_train_batch_size=BATCH,
                    score_args=score_args,
                    overwrite_output_dir=True,
                )
                return analyzer.load_self_scores("self")["all_modules"]

        values, seconds = common.timed(run)
        return common.as_numpy(values), seconds

    return compute, self_compute


if __name__ == "__main__":
    common.main(
        "Kronfluence",
        {
            "EK-FAC": _method("ekfac"),
            "K-FAC": _method("kfac"),
            "EK-FAC empirical": _method("ekfac", empirical=True),
        },
    )
