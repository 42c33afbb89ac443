"""pyDVL 0.10 compatibility of EkfacInfluence: same values as pyDVL's EkfacInfluence.

Runs only in the pyDVL venv (numpy<2), through ``bash .ci/pydvl_env.sh``. A seeded small MLP of
Linear layers is trained a few steps in float64; both EK-FAC models are
fitted on the same DataLoader and compared with and without ``update_diagonal``. pyDVL builds
its factors with ``torch.zeros`` in the default dtype, so its fits run with the default dtype
set to float64 (otherwise its factors are float32 whatever the model's dtype). Every layer has a
bias: pyDVL 0.10's EK-FAC solve takes the last ``d_out`` entries of each layer's block as the
bias, so on a layer without bias its values are wrong (0.7% off here), not ours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydvl.influence import InfluenceMode
from pydvl.influence.torch import EkfacInfluence as PyDVLEkfac
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infl_array.torch import EkfacInfluence

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydvl"),
    pytest.mark.filterwarnings("ignore::FutureWarning:pydvl"),
    # pyDVL's K-FAC hooks (register_full_backward_hook) on a first layer whose input needs no
    # gradient: torch warns that the hook fires on output gradients, which is what pyDVL uses
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]

REG = 0.05
N_TRAIN, N_TEST, BATCH = 70, 13, 16  # a ragged last batch: both weight samples equally
CE = torch.nn.functional.cross_entropy
TOL = 1e-6


def _record(name: str, value: float) -> None:
    print(f"{name}: {value:.3e}")
    path = os.environ.get("PYDVL_COMPAT_REPORT")
    if path:  # several check files share the report: merge into what is there
        report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        report[name] = value
        Path(path).write_text(json.dumps(report, indent=1, sort_keys=True))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


@contextmanager
def float64_default() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = _data(N_TRAIN, 0), _data(N_TEST, 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        CE(model(train[0]), train[1]).backward()
        opt.step()
    model.eval()
    loader = DataLoader(TensorDataset(*train), batch_size=BATCH)
    return {"train": train, "test": test, "model": model, "loader": loader}


@pytest.mark.parametrize("update_diagonal", [False, True])
def test_ekfac_matches_pydvl(setup: dict[str, Any], update_diagonal: bool) -> None:
    model, loader = setup["model"], setup["loader"]
    with float64_default():
        theirs = PyDVLEkfac(model, update_diagonal=update_diagonal, hessian_regularization=REG)
        theirs.fit(loader)
    ours = EkfacInfluence(model, hessian_regularization=REG, update_diagonal=update_diagonal)
    ours.fit(loader)
    (xt, yt), (x, y) = setup["test"], setup["train"]
    expected = theirs.influences(xt, yt, x, y, mode=InfluenceMode.Up)
    assert expected.dtype == torch.float64
    got = ours.influences(xt, yt, x, y)
    d = rel_diff(got, expected)
    _record(f"ekfac (update_diagonal={update_diagonal}): pyDVL vs infl_array max rel diff", d)
    assert d <= TOL
    # self-influence: the diagonal of pyDVL's train x train matrix
    tt = theirs.influences(x, y, x, y, mode=InfluenceMode.Up).diagonal()
    diag = ours.factor_diagonal(ours.test_factors(x, y), ours.train_factors(x, y))
    d_self = rel_diff(diag, tt)
    _record(f"ekfac (update_diagonal={update_diagonal}): self-influence max rel diff", d_self)
    assert d_self <= TOL
    # pyDVL's per-layer influences sum to the total
    by_layer = theirs.influences_by_layer(xt, yt, x, y, mode=InfluenceMode.Up)
    np.testing.assert_allclose(
        sum(v for v in by_layer.values()).detach().numpy(), got.numpy(), rtol=1e-6, atol=1e-9
    )


def test_fisher_type_empirical_differs(setup: dict[str, Any]) -> None:
    """pyDVL's label-free curvature is the default for cross entropy; the empirical one differs."""
    model, loader = setup["model"], setup["loader"]
    with float64_default():
        theirs = PyDVLEkfac(model, update_diagonal=True, hessian_regularization=REG).fit(loader)
    ours = EkfacInfluence(model, CE, REG, update_diagonal=True, fisher_type="empirical")
    ours.fit(loader)
    (xt, yt), (x, y) = setup["test"], setup["train"]
    expected = theirs.influences(xt, yt, x, y, mode=InfluenceMode.Up)
    assert rel_diff(ours.influences(xt, yt, x, y), expected) > 1e-3
