"""Leave-one-out retraining agrees with the influence prediction.

L2-regularised logistic regression (a torch linear model with BCE-with-logits) on the
standardised breast-cancer data, trained to convergence with LBFGS on
``mean BCE + (reg/2) ||theta||^2`` (all parameters penalised, so the Hessian of the objective is
exactly ``H + reg*Id`` with ``H`` the Hessian of the mean loss: ``regularization=reg``).

Removing training point ``j`` is upweighting it by ``-1/n``; with the "up" convention
(positive = helpful) the total test loss then changes by about ``+(1/n) sum_i I[i, j]``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch import nn

from infl_array.torch import CgInfluence, DirectInfluence

REG = 0.05
N_TRAIN, N_TEST, N_LOO = 150, 100, 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    penalty = sum((p**2).sum() for p in model.parameters())
    return F.binary_cross_entropy_with_logits(model(x), y) + 0.5 * REG * penalty


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _objective(model, x, y)
        loss.backward()
        return loss

    for _ in range(5):  # LBFGS may stop on tolerance_change first: restart until converged
        opt.step(closure)
        closure()
        grads = [p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]
        grad_norm = float(torch.cat(grads).norm())
        if grad_norm < 1e-7:
            return
    raise AssertionError(f"LBFGS did not converge: gradient norm {grad_norm:.3g}")


@pytest.fixture(scope="module")
def loo():
    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.target))
    xs = StandardScaler().fit_transform(data.data[order[: N_TRAIN + N_TEST]])
    x = torch.from_numpy(xs)
    y = torch.from_numpy(data.target[order[: N_TRAIN + N_TEST]].astype(np.float64))[:, None]
    x_tr, y_tr, x_te, y_te = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 1).double()
    _train(model, x_tr, y_tr)
    full_state = {k: v.clone() for k, v in model.state_dict().items()}

    def test_loss(m: nn.Module) -> float:
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(m(x_te), y_te, reduction="sum"))

    base = test_loss(model)
    subset = rng.choice(N_TRAIN, size=N_LOO, replace=False)
    deltas = []
    for j in subset:
        keep = np.delete(np.arange(N_TRAIN), j)
        m = nn.Linear(x.shape[1], 1).double()
        m.load_state_dict(full_state)  # warm start from the full solution
        _train(m, x_tr[keep], y_tr[keep])
        deltas.append(test_loss(m) - base)
    return {
        "model": model,
        "train": (x_tr, y_tr),
        "test": (x_te, y_te),
        "subset": subset,
        "actual": np.array(deltas),
    }


@pytest.mark.parametrize("cls", [DirectInfluence, CgInfluence])
def test_influence_predicts_leave_one_out(loo, cls):
    x_tr, y_tr = loo["train"]
    inf = cls(loo["model"], F.binary_cross_entropy_with_logits, regularization=REG)
    inf.fit((x_tr, y_tr))
    sub = loo["subset"]
    infl = inf.influences(*loo["test"], x_tr[sub], y_tr[sub])
    predicted = (infl.sum(0) / N_TRAIN).numpy()
    r = np.corrcoef(predicted, loo["actual"])[0, 1]
    assert r >= 0.95, f"Pearson {r:.4f} between predicted and actual LOO test-loss change"
    # same sign convention and scale: removing a helpful point raises the test loss
    slope = np.polyfit(predicted, loo["actual"], 1)[0]
    assert 0.5 < slope < 2.0
