"""dattri's worker of the language-model benchmark: its projected influence function (LoGra).

Runs in ``.venv-dattri`` (``bash benchmarks/peers/peer_envs.sh dattri``). Usage:
``python benchmarks/lm/lm_dattri.py '<json>'`` with keys ``data``, ``threads``,
``projection_dim`` (the total width to match), ``damping`` (dattri's own, relative: times each
layer's mean eigenvalue), ``batch``, ``out``.

dattri 0.3's ``LoGraAttributor`` (its block-projected IF: per-layer Kronecker-factored normal
projections, empirical-Fisher preconditioner per layer, damping ``damping`` x the layer's mean
eigenvalue, its ``stable_inverse``: the rule of the other methods; its default is 1e-5) on
its default layers, every ``nn.Linear`` (GPT-2's ``Conv1D`` replaced by ``nn.Linear`` first,
as Kronfluence's example does, so that the blocks are tracked). Its
``proj_dim`` is per layer and must be a perfect square: the largest square with ``layers x
proj_dim <= projection_dim``. The loss is the summed next-token cross entropy of the batch (so
the captured per-sample gradients are the per-sequence losses'). ``cache`` on the train
sequences (``fit``), then ``attribute`` (train x query scores, transposed) (``scores``), in a
temporary working directory (dattri writes ``batch_metadata.json`` into the current one).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from dattri.algorithm.logra import LoGraAttributor
from dattri.task import AttributionTask
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import (
    Sequences,
    Timer,
    linear_fraction,
    lm_loss,
    load,
    logits_of,
    replace_conv1d_modules,
    worker_args,
    write_result,
)


def loss_func(model: torch.nn.Module, batch, device: str) -> torch.Tensor:
    x = batch["input_ids"].to(device)
    return lm_loss(logits_of(model, x), x, reduction="sum")


def main() -> None:
    args = worker_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    model, blob = load(args["data"])
    replace_conv1d_modules(model)
    covered = linear_fraction(model)
    layers = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    side = math.isqrt(args["projection_dim"] // layers)
    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    attributor = LoGraAttributor(task, device="cpu", proj_dim=side * side, damping=args["damping"])
    train = DataLoader(Sequences(blob["train"]), batch_size=args["batch"], shuffle=False)
    test = DataLoader(Sequences(blob["test"]), batch_size=args["batch"], shuffle=False)
    timer = Timer()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # dattri writes its batch_metadata.json into the working directory
        with timer("fit"):
            attributor.cache(train)
        with timer("scores"):
            scores = attributor.attribute(train, test).T.numpy()
        os.chdir(here)
    result = {"times": timer.times, "covered": covered, "width": layers * side * side}
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
