"""TRAK (traker 0.3.2) scores on a ladder CNN at a given projection width (runs in .venv-trak).

Usage: ``.venv-trak/bin/python benchmarks/peers/trak_scores.py '<json>'`` with keys
``size, n_train, n_test, rows, dim, reg, threads, batch, out``. One checkpoint, the
``image_classification`` task (margin output function), CPU (TRAK's ``BasicProjector`` with a
normal JL matrix; its CUDA projector needs a GPU), float32. ``lambda_reg = n_train * reg``: the
others' absolute damping ``reg`` in TRAK's scale (its ``X^T X`` sums over the train points and
its features ``P^T g / sqrt(n_params)`` keep ``P^T P / n_params`` near the identity). TRAK's
default ``lambda_reg = 0`` inverts a singular ``X^T X`` whenever ``n_train < dim`` (rank at
most ``n_train``), and its scores are then noise. Featurizes all train points
(``featurize``, including ``finalize_features``), then scores the first ``rows`` test points
(``score``). Writes timings and peak RSS to ``out`` and the ``(rows, n_train)`` scores next to it.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import torch
from trak import TRAKer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import Timer, load, worker_args, write_result


def main() -> None:
    args = worker_args()
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    logging.disable(logging.WARNING)
    model, data = load(args["size"], args["n_train"], args["n_test"])
    x, y = data["x_train"], data["y_train"]
    xt, yt = data["x_test"][: args["rows"]], data["y_test"][: args["rows"]]
    timer = Timer()
    bs = args["batch"]
    with tempfile.TemporaryDirectory() as tmp:
        traker = TRAKer(
            model=model,
            task="image_classification",
            train_set_size=len(x),
            save_dir=tmp,
            device="cpu",
            proj_dim=args["dim"],
            use_half_precision=False,
            lambda_reg=len(x) * args["reg"],
        )
        with timer("featurize"):
            traker.load_checkpoint(model.state_dict(), model_id=0)
            for s in range(0, len(x), bs):
                traker.featurize(
                    batch=[x[s : s + bs], y[s : s + bs]], num_samples=len(x[s : s + bs])
                )
            traker.finalize_features()
        with timer("score"):
            traker.start_scoring_checkpoint(
                exp_name="bench", checkpoint=model.state_dict(), model_id=0, num_targets=len(xt)
            )
            for s in range(0, len(xt), bs):
                traker.score(
                    batch=[xt[s : s + bs], yt[s : s + bs]], num_samples=len(xt[s : s + bs])
                )
            scores = traker.finalize_scores(exp_name="bench")
    write_result(args["out"], {"times": timer.times, "rows": args["rows"]}, scores.T)


if __name__ == "__main__":
    main()
