"""Kronfluence 1.0.1's worker of the language-model benchmark; runs in ``.venv-kronfluence-lm``.

Usage: ``python benchmarks/lm/lm_kronfluence.py '<json>'`` with keys ``data``, ``threads``,
``strategy`` (``ekfac``, ``kfac``, ...: Kronfluence's factor strategies), ``batch`` (train
batch), ``query_batch``, ``damping`` (relative: each module damped by ``damping`` x its mean
eigenvalue, Kronfluence's heuristic ``damping_factor=None``, whose scale is its constant
``HEURISTIC_DAMPING_SCALE``, 0.1; set to ``damping`` when that differs), ``out``.

Configured as Kronfluence's language-model example (``examples/wikitext``: GPT-2 through
``replace_conv1d_modules``, since Kronfluence supports only ``nn.Linear`` and ``nn.Conv2d``,
its DOCUMENTATION.md "Supported Modules"): the task's train loss is the summed next-token cross
entropy, with labels sampled from the model when ``sample=True`` (the true Fisher, its default);
the measurement is the query's summed next-token loss; every ``nn.Linear`` is tracked (after
the conversion: the blocks' projections and ``lm_head``; the embeddings and layer norms are
not supported). ``fit_all_factors`` (``fit``) then ``compute_pairwise_scores`` over all train
sequences with ``per_device_query_batch_size`` = all queries in one batch (the largest query
batch, as its DOCUMENTATION.md recommends for speed; it fits here) (``scores``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import kronfluence.factor.config as kronfluence_factor_config
import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from kronfluence.utils.dataset import DataLoaderKwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import (
    Sequences,
    Timer,
    linear_fraction,
    load,
    replace_conv1d_modules,
    worker_args,
    write_result,
)


class LanguageModeling(Task):
    """Kronfluence's language-model task (its wikitext example)."""

    def compute_train_loss(self, batch, model, sample=False):
        logits = model(input_ids=batch["input_ids"]).logits[..., :-1, :].contiguous()
        logits = logits.view(-1, logits.size(-1))
        if not sample:
            labels = batch["labels"][..., 1:].contiguous().view(-1)
            return F.cross_entropy(logits, labels, reduction="sum")
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1)
            sampled = torch.multinomial(probs, num_samples=1).flatten()
        return F.cross_entropy(logits, sampled, reduction="sum")

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model, sample=False)


def main() -> None:
    args = worker_args()
    logging.disable(logging.WARNING)
    kronfluence_factor_config.HEURISTIC_DAMPING_SCALE = args["damping"]  # 0.1: its own
    model, blob = load(args["data"])
    train, test = Sequences(blob["train"]), Sequences(blob["test"])
    replace_conv1d_modules(model)
    covered = linear_fraction(model)
    task = LanguageModeling()
    model = prepare_model(model, task)
    timer = Timer()
    loader = DataLoaderKwargs(num_workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("lm", model, task, cpu=True, disable_tqdm=True, output_dir=tmp)
        with timer("fit"):
            analyzer.fit_all_factors(
                "factors",
                train,
                per_device_batch_size=args["batch"],
                dataloader_kwargs=loader,
                factor_args=FactorArguments(strategy=args["strategy"]),
                overwrite_output_dir=True,
            )
        with timer("scores"):
            analyzer.compute_pairwise_scores(
                "scores",
                "factors",
                test,
                train,
                per_device_query_batch_size=args["query_batch"],
                per_device_train_batch_size=args["batch"],
                dataloader_kwargs=loader,
                score_args=ScoreArguments(damping_factor=None),  # its heuristic
                overwrite_output_dir=True,
            )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"].numpy()
    result = {"times": timer.times, "covered": covered, "strategy": args["strategy"]}
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
