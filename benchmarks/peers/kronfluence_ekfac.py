"""Kronfluence 1.0.1 EK-FAC pairwise scores on a ladder CNN (runs in .venv-kronfluence).

Usage: ``.venv-kronfluence/bin/python benchmarks/peers/kronfluence_ekfac.py '<json>'`` with
keys ``size, n_train, n_test, rows, damping, empirical, threads, batch, query_batch, out``.
Fits all EK-FAC factors on the train data (timed as ``fit``), then, for each ``r`` in the list
``rows``, the pairwise scores of the first ``r`` test points against all train points
(``scores_<r>``), ``query_batch`` test points per pass over the train data (Kronfluence's
``per_device_query_batch_size``): the driver extrapolates linearly in the number of test points,
so ``rows`` are whole passes. The timings so far are written after every phase, so a run cut
off by the driver's timeout still reports its fit. ``damping`` is
Kronfluence's absolute ``damping_factor`` (None: its heuristic 0.1 x mean eigenvalue);
``empirical`` uses the true labels for the curvature (``use_empirical_fisher``), else sampled
labels (its default).
Writes the timings and peak RSS to ``out`` (JSON) and the score rows next to it (``.npy``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from kronfluence.utils.dataset import DataLoaderKwargs
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import Timer, load, worker_args, write_result


class Classification(Task):
    """Cross entropy summed over the batch (Kronfluence's convention), loss as measurement."""

    def compute_train_loss(self, batch, model, sample=False):
        x, y = batch
        logits = model(x)
        if sample:
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
        return F.cross_entropy(logits, y, reduction="sum")

    def compute_measurement(self, batch, model):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def main() -> None:
    args = worker_args()
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    logging.disable(logging.WARNING)
    model, data = load(args["size"], args["n_train"], args["n_test"])
    train = TensorDataset(data["x_train"], data["y_train"])
    task = Classification()
    model = prepare_model(model, task)
    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=tmp)
        loader = DataLoaderKwargs(num_workers=0)
        factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=args["empirical"])
        with timer("fit"):
            analyzer.fit_all_factors(
                "ekfac",
                train,
                per_device_batch_size=args["batch"],
                dataloader_kwargs=loader,
                factor_args=factor_args,
                overwrite_output_dir=True,
            )
        write_result(args["out"], {"times": timer.times, "rows": [], "partial": True}, None)
        for r in args["rows"]:
            query = TensorDataset(data["x_test"][:r], data["y_test"][:r])
            with timer(f"scores_{r}"):
                analyzer.compute_pairwise_scores(
                    f"pairs_{r}",
                    "ekfac",
                    query,
                    train,
                    per_device_query_batch_size=min(r, args["query_batch"]),
                    per_device_train_batch_size=args["batch"],
                    dataloader_kwargs=loader,
                    score_args=ScoreArguments(damping_factor=args["damping"]),
                    overwrite_output_dir=True,
                )
            done = [q for q in args["rows"] if f"scores_{q}" in timer.times]
            write_result(args["out"], {"times": timer.times, "rows": done, "partial": True}, None)
        scores = analyzer.load_pairwise_scores(f"pairs_{r}")["all_modules"].numpy()
    config = {"query_batch": args["query_batch"], "batch": args["batch"]}
    write_result(args["out"], {"times": timer.times, "rows": args["rows"], **config}, scores)


if __name__ == "__main__":
    main()
