"""Small torch models and data shared by the tests, built the same way everywhere.

* :func:`conv_model`, :func:`data`, :func:`trained`: the small CNN of the per-layer backend tests
  (two convolutions and two linear layers on ``(2, 5, 5)`` inputs, three classes), in float64,
  trained briefly with Adam under :data:`CE` (cross-entropy); :data:`REG` their damping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REG = 0.01
CE = F.cross_entropy


def conv_model() -> nn.Sequential:
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


def trained(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(40):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model.eval()


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1, 2, 2] > 0.5).long()
