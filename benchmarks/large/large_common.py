"""Shared pieces of the large-model benchmark (``bench_large.py`` and its peer scripts).

Imports only torch and numpy, so that the peer scripts can use it from their own venvs
(``benchmarks/peers/``). The data are synthetic and CIFAR-like (3x32x32 images, 10 classes):
each class is a smooth random template (8x8, upsampled), an image is its class template times
a random contrast plus Gaussian noise, and 10% of the train labels are flipped, so a briefly
trained CNN learns something and influence has structure to find.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

WORK = Path(__file__).resolve().parents[1] / "_work" / "large"

# name -> (channel width c, hidden width h): about 1e5, 1e6, 1e7 parameters
LADDER = {"1e5": (12, 128), "1e6": (32, 600), "1e7": (64, 4096)}


def make_cnn(size: str) -> nn.Sequential:
    """The ladder CNN: four 3x3 conv + ReLU + max-pool stages, then two Linear layers."""
    c, h = LADDER[size]
    chans = [3, c, 2 * c, 4 * c, 8 * c]
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chans):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(8 * c * 4, h), nn.ReLU(), nn.Linear(h, 10)]
    return nn.Sequential(*layers)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_data(n_train: int, n_test: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic CIFAR-like data (see the module docstring), float32."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 8, 8, generator=g)
    templates = nn.functional.interpolate(templates, size=32, mode="bilinear")
    out: dict[str, torch.Tensor] = {}
    for name, n in (("train", n_train), ("test", n_test)):
        y = torch.randint(0, 10, (n,), generator=g)
        contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
        x = templates[y] * contrast + 1.5 * torch.randn(n, 3, 32, 32, generator=g)
        if name == "train":
            flip = torch.rand(n, generator=g) < 0.1
            y = torch.where(flip, torch.randint(0, 10, (n,), generator=g), y)
        out[f"x_{name}"], out[f"y_{name}"] = x, y
    return out


def data_path(n_train: int, n_test: int) -> Path:
    return WORK / f"data_{n_train}_{n_test}.pt"


def model_path(size: str, n_train: int, seed: int = 0) -> Path:
    """The trained ladder model; ``seed`` > 0: another independent training run (TRAK's
    ensemble of checkpoints)."""
    return WORK / f"model_{size}_{n_train}{f'_seed{seed}' if seed else ''}.pt"


def load(size: str, n_train: int, n_test: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The trained ladder model (eval mode) and the data, as saved by ``bench_large.py``."""
    data = torch.load(data_path(n_train, n_test))
    model = make_cnn(size)
    model.load_state_dict(torch.load(model_path(size, n_train)))
    return model.eval(), data


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Named wall-clock timings: ``with timer("fit"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def write_result(path: str | Path, result: dict[str, Any], scores: np.ndarray | None) -> None:
    """Write a worker's JSON result (with its peak RSS) and its score rows (``.npy``)."""
    result = {**result, "peak_rss_mib": peak_rss_mib()}
    Path(path).write_text(json.dumps(result, indent=1))
    if scores is not None:
        np.save(Path(path).with_suffix(".npy"), np.asarray(scores, dtype=np.float64))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b``."""
    ra = np.argsort(np.argsort(a, axis=1), axis=1).astype(np.float64)
    rb = np.argsort(np.argsort(b, axis=1), axis=1).astype(np.float64)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def worker_args() -> dict[str, Any]:
    """A worker's arguments: one JSON object in ``sys.argv[1]``."""
    return json.loads(sys.argv[1])
