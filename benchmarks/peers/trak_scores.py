"""TRAK (traker 0.3.2) scores on a ladder CNN at a given projection width (runs in .venv-trak).

Usage: ``.venv-trak/bin/python benchmarks/peers/trak_scores.py '<json>'`` with keys
``size, n_train, n_test, rows, dim, reg, checkpoints, threads, batch, out``.

Configured as TRAK's docs recommend ("Quickstart": an ensemble of independently trained
checkpoints, "using multiple checkpoints significantly improves TRAK's performance"; its
example trains three; ``proj_dim`` between 1,000 and 40,000, default 2048): ``checkpoints``
independently trained models (``large_common.model_path(..., seed)``), ``proj_dim = dim`` (our
projection width), the ``image_classification`` task (margin output), CPU (its
``BasicProjector``; the CUDA projector needs a GPU), float32.

Damping, chosen the same way as ours: TRAK adds ``lambda_reg`` to ``X^T X``, a SUM over the
train points of projected margin gradients, while ours adds ``reg`` to the empirical Fisher, a
MEAN of loss-gradient outer products; the two scales differ (sum vs mean, margin vs loss,
projection). So for each checkpoint ``lambda_reg`` is set to give the same damping relative to
the curvature's mean eigenvalue: ``lambda_reg / (tr(X^T X) / proj_dim) = reg / (tr(F) /
n_params)`` with ``tr(F)`` the mean squared norm of the per-sample loss gradients (computed
here). (``lambda_reg = n_train * reg``, used before, converts the sum to a mean only.)

As its Quickstart does: featurizes all train points for every checkpoint, then
``finalize_features()`` once for all of them (``featurize``; TRAK's score computer takes one
``lambda_reg``, so the ensemble's is the mean of the checkpoints' matched values, which differ by
about 1%), then scores the first ``rows`` test points (``score``). Its CPU projector is used as
TRAK sets it up (``finalize_features`` frees the projector's matrix and scoring redraws it;
nothing of the projector is touched here). Calling ``finalize_features`` once matters with
this projector: traker 0.3.2's ``finalize_features`` starts with ``projector.free_memory()``,
whose ``del self.proj_matrix`` does not check ``proj_matrix_available``, so a second call with
no projection in between (an earlier version of this worker finalized each checkpoint
separately after featurizing all of them) raises ``AttributeError: 'BasicProjector' object has
no attribute 'proj_matrix'``. Writes timings, the dampings and peak RSS to ``out``
and the ``(rows, n_train)`` scores next to it.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from trak import TRAKer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import Timer, load, make_cnn, model_path, worker_args, write_result


def fisher_mean_eigenvalue(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """``tr(F) / n_params`` of the empirical Fisher (mean of per-sample loss-gradient outer
    products): the mean squared per-sample gradient norm over the parameter count."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = 0.0
    for s in range(0, len(x), 100):
        g = per_sample(params, x[s : s + 100], y[s : s + 100])
        total += sum(float((v.flatten(1) ** 2).sum()) for v in g.values())
    return total / len(x) / sum(v.numel() for v in params.values())


def main() -> None:
    args = worker_args()
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    logging.disable(logging.WARNING)
    model, data = load(args["size"], args["n_train"], args["n_test"])
    x, y = data["x_train"], data["y_train"]
    xt, yt = data["x_test"][: args["rows"]], data["y_test"][: args["rows"]]
    ckpts = []
    for seed in range(args["checkpoints"]):
        m = make_cnn(args["size"])
        m.load_state_dict(torch.load(model_path(args["size"], args["n_train"], seed)))
        ckpts.append(m.eval().state_dict())
    timer = Timer()
    bs = args["batch"]
    lambdas, relative = [], []
    with tempfile.TemporaryDirectory() as tmp:
        traker = TRAKer(
            model=model,
            task="image_classification",
            train_set_size=len(x),
            save_dir=tmp,
            device="cpu",
            proj_dim=args["dim"],
            use_half_precision=False,
        )
        with timer("featurize"):
            for mid, ckpt in enumerate(ckpts):
                traker.load_checkpoint(ckpt, model_id=mid)
                for s in range(0, len(x), bs):
                    traker.featurize(
                        batch=[x[s : s + bs], y[s : s + bs]], num_samples=len(x[s : s + bs])
                    )
            for mid, ckpt in enumerate(ckpts):  # each checkpoint's matched damping
                model.load_state_dict(ckpt)
                rel = args["reg"] / fisher_mean_eigenvalue(model, x, y)
                traker.saver.load_current_store(mid)
                feats = torch.as_tensor(traker.saver.current_store["grads"])
                lambdas.append(rel * float((feats.double() ** 2).sum()) / args["dim"])
                relative.append(rel)
            traker.score_computer.lambda_reg = sum(lambdas) / len(lambdas)
            traker.finalize_features()  # once, for every checkpoint (its Quickstart)
        with timer("score"):
            for mid, ckpt in enumerate(ckpts):
                traker.start_scoring_checkpoint(
                    exp_name="bench", checkpoint=ckpt, model_id=mid, num_targets=len(xt)
                )
                for s in range(0, len(xt), bs):
                    traker.score(
                        batch=[xt[s : s + bs], yt[s : s + bs]], num_samples=len(xt[s : s + bs])
                    )
            scores = traker.finalize_scores(exp_name="bench")
    result = {
        "times": timer.times,
        "rows": args["rows"],
        "dim": args["dim"],
        "checkpoints": len(ckpts),
        "batch": bs,
        "lambda_reg": [traker.score_computer.lambda_reg],
        "lambda_reg_per_checkpoint": lambdas,
        "relative_damping": relative,
    }
    write_result(args["out"], result, scores.T)


if __name__ == "__main__":
    main()
