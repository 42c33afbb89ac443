"""Models, training and outputs of the attribution-quality benchmark (torch and numpy only).

Imported by ``benchmarks/quality/quality.py`` in the project's environment and by the peer scripts
in ``benchmarks/peers/`` inside the peers' virtual environments (pyDVL's has numpy<2), so it uses
nothing else: no scikit-learn, no infl_array.

Every model takes flat 64-feature digit images (8x8, scaled to [0, 1]) and returns 10 logits,
in float64. Training minimises ``mean cross-entropy + (weight_decay / 2) ||theta||^2`` over all
parameters with full-batch L-BFGS (strong Wolfe line search) from a seeded initialisation, to a
gradient norm below ``GRAD_TOL``; so the Hessian of the training objective at the trained
parameters is ``H + weight_decay * Id`` with ``H`` the Hessian of the mean loss, which is what
``regularization=weight_decay`` means for every backend. Training is deterministic: the same
data and initialisation give the same parameters.

The output recorded on a test point is ``log p_y`` (minus the cross-entropy loss): higher is
better, so positive (helpful) influence predicts a higher output. Per test point, any strictly
increasing function of ``p_y`` (the correct-class margin ``log p_y - log(1 - p_y)`` of Park et
al. 2023, for one) has the same Spearman correlations, hence the same LDS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_FEATURES, N_CLASSES = 64, 10
GRAD_TOL = 1e-6
"""Training stops when the gradient norm of the objective is below this (or after restarts)."""


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """A freshly initialised float64 model: ``"logreg"``, ``"mlp"`` or ``"cnn"``.

    * ``logreg``: softmax regression, ``Linear(64, 10)`` (650 parameters);
    * ``mlp``: ``Linear(64, 32) - tanh - Linear(32, 10)`` (2,410 parameters);
    * ``cnn``: ``Conv(1->4, 3x3) - tanh - avgpool 2 - Conv(4->8, 3x3) - tanh - avgpool 2 -
      Linear(32, 10)`` on the 8x8 image (666 parameters).
    """
    torch.manual_seed(seed)
    if kind == "logreg":
        # in a Sequential: Kronfluence cannot wrap a root module that is itself a Linear
        model: nn.Module = nn.Sequential(nn.Linear(N_FEATURES, N_CLASSES))
    elif kind == "mlp":
        model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.Tanh(), nn.Linear(32, N_CLASSES))
    elif kind == "cnn":
        model = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, N_CLASSES),
        )
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected 'logreg', 'mlp' or 'cnn'.")
    return model.double()


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, wd: float) -> torch.Tensor:
    """``mean cross-entropy + (wd / 2) ||theta||^2``."""
    penalty = sum((p**2).sum() for p in model.parameters())
    return F.cross_entropy(model(x), y) + 0.5 * wd * penalty


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    wd: float,
    grad_tol: float = GRAD_TOL,
    max_rounds: int = 10,
) -> float:
    """Minimise :func:`objective` in place with full-batch L-BFGS; return the final grad norm."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(model, x, y, wd)
        loss.backward()
        return loss

    grad_norm = float("inf")
    for _ in range(max_rounds):  # L-BFGS may stop on tolerance_change first: restart
        opt.step(closure)
        closure()
        grad_norm = float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
        if grad_norm < grad_tol:
            break
    return grad_norm


def outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``log p_y`` of each sample (minus its cross-entropy loss), float64 numpy."""
    with torch.no_grad():
        return (-F.cross_entropy(model(x), y, reduction="none")).numpy().astype(np.float64)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct argmax predictions."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


# ---------------------------------------------------------------------------------- exchange
def save_case(folder: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write what the peer scripts need: ``meta.json`` and ``data.npz`` (models saved apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "data.npz", **arrays)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_case(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``meta.json`` and ``data.npz`` written by :func:`save_case` (arrays as tensors)."""
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "data.npz") as npz:
        arrays = {k: torch.from_numpy(npz[k]) for k in npz.files}
    return meta, arrays


def load_model(folder: Path, kind: str, which: str) -> nn.Module:
    """The trained model ``which`` (``"clean"`` or ``"noisy"``) of a case folder, in eval mode."""
    model = make_model(kind)
    model.load_state_dict(torch.load(folder / f"model_{which}.pt", weights_only=True))
    return model.eval()
