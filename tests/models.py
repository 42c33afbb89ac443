"""Small torch models and data shared by the tests, built the same way everywhere.

Each builder seeds exactly where the tests it replaced seeded, so a test's numbers do not depend
on which file builds its model:

* :func:`tanh_mlp`: ``Linear -> Tanh -> ... -> Linear``, built right after
  ``torch.manual_seed(seed)`` (no reseeding with ``seed=None``), in float64 unless told
  otherwise;
* :func:`adam_fit`: a fixed number of full-batch Adam steps on a loss (cross-entropy by default);
* :func:`three_class_data`, :func:`binary_data`: ``(x, y)`` of a classification problem drawn
  from their own generator (the global torch RNG is left alone);
* :func:`small_cnn`, :func:`cnn_data`, :func:`trained_cnn`: the small CNN of the per-layer
  backend tests (two convolutions and two linear layers on ``(2, 5, 5)`` inputs, three classes),
  in float64, trained briefly under :data:`CE`; :data:`REG` is their damping.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

REG = 0.01
CE = F.cross_entropy


def tanh_mlp(
    *widths: int, seed: int | None = 0, double: bool = True, insert: nn.Module | None = None
) -> nn.Sequential:
    """``Linear(widths[0], widths[1]) -> Tanh -> ... -> Linear(widths[-2], widths[-1])``.

    ``insert`` is placed right after the first ``Tanh`` (a dropout or batch-norm layer, say).

    >>> [type(m).__name__ for m in tanh_mlp(4, 5, 3, insert=nn.Dropout())]
    ['Linear', 'Tanh', 'Dropout', 'Linear']
    """
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(widths)):
        if i:
            layers.append(nn.Tanh())
            if i == 1 and insert is not None:
                layers.append(insert)
        layers.append(nn.Linear(a, b))
    model = nn.Sequential(*layers)
    return model.double() if double else model


def adam_fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = CE,
) -> nn.Module:
    """``steps`` full-batch Adam steps on ``loss(model(x), y)``; returns ``model`` (trained)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model


def three_class_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ N(0, 1)`` of shape ``(n, d)`` in float64, ``y = [x0 > 0] + [x1 > 0.5]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def binary_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ N(0, 1)`` of shape ``(n, d)`` in float32 and random labels in ``{0, 1}``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 2, (n,), generator=g)


def small_cnn() -> nn.Sequential:
    """Two convolutions and two linear layers, ``(2, 5, 5)`` -> 3 classes, float64, seed 0."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2, stride=2, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.Tanh(),
        nn.Linear(4, 3),
    ).double()


def trained_cnn(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """``model`` after 40 Adam steps (lr 0.03) on :data:`CE`, in eval mode."""
    adam_fit(model, x, y, lr=0.03, steps=40)
    return model.eval()


def cnn_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, 2, 5, 5)`` in float64 and three-class labels for :func:`small_cnn`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1, 2, 2] > 0.5).long()
