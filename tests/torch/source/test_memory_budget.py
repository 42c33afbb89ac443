"""memory_budget bounds a fit and a fill (issue 21): one budget per backend and its arrays,
block shapes and tiles chosen from what is left, refusals that name the numbers."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import FeatureFactors, integer_data, model_array
from models import cnn_data, small_cnn, trained_cnn
from torch import nn

import infl_array as ia
from infl_array.torch import (
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    LissaInfluence,
    MemoryBudgetError,
    NystroemSketchInfluence,
    ProjectedInfluence,
)
from infl_array.torch.full.functional import VMAP_PERFORMANCE_WARNING, warn_once_per_cause

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = cnn_data(40, 0), cnn_data(7, 1)
    return {"model": trained_cnn(small_cnn(), *train), "train": train, "test": test}


def _filled(setup: dict[str, Any], path: Path, budget: int) -> tuple[Any, EkfacInfluence]:
    infl = EkfacInfluence(setup["model"], regularization=0.1, memory_budget=budget)
    infl.fit(setup["train"])
    arr = ia.InfluenceArray.create(
        path, infl, test=setup["test"], train=setup["train"], dtype="float64"
    )
    arr.fill(progress=False)
    return arr, infl


def test_a_small_budget_picks_smaller_blocks_and_tiles_and_holds_to_it(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    big, big_infl = _filled(setup, tmp_path / "big", 4 << 30)
    assert big.block_shape == (7, 40) and big.stats.test_factors == 1  # the whole matrix
    small, infl = _filled(setup, tmp_path / "small", 60_000)
    assert small.block_shape[0] < 7 and small.block_shape[1] < 40
    assert small.stats.test_factors > 1  # tiles of fewer test rows, each's factors once
    # what the backend, the factor memo, the working space and the writes held together
    assert 0.9 * infl.budget.total < infl.budget.high_water <= infl.budget.total
    assert big_infl.budget.high_water <= big_infl.budget.total
    np.testing.assert_allclose(small[:], big[:], rtol=1e-10, atol=1e-12)
    # the array draws from the backend's budget: its memo and decoded blocks are held there
    source: Any = small._engine.source
    assert source.budget is infl.budget and small._engine.cache.budget is infl.budget


def test_a_budget_too_small_for_one_sample_names_the_numbers(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(MemoryBudgetError) as info:
        _filled(setup, tmp_path / "s", 20_000)
    err = info.value
    assert err.budget == 20_000 and err.nbytes > 0 and err.what
    assert "the Kronecker factors and eigenbases of all layers" in err.held
    assert "raise memory_budget" in str(err) and f"{err.nbytes / 1024:.1f} KiB" in str(err)


def test_a_model_without_a_budget_gets_the_arrays(tmp_path: Path) -> None:
    arr, full = model_array(
        tmp_path / "s", 30, 50, (8, 16), model=FeatureFactors(), memory_budget=1 << 20,
        disk_budget=0, dtype="float64",
    )  # fmt: skip
    source: Any = arr._engine.source
    assert source.budget.total == 1 << 20
    arr.fill(progress=False)
    np.testing.assert_allclose(arr[:], full)
    assert 0 < source.budget.high_water <= 1 << 20
    assert not source.factor_store.side("test").is_stored(3, 8)  # disk_budget=0
    test, train = integer_data(30, 3, 0), integer_data(50, 3, 1)
    # the older names are still accepted, and not together with the new ones
    ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train, factor_budget_bytes=1 << 20)
    with pytest.raises(TypeError, match="disk_budget or its older name"):
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train, disk_budget=0,
                factor_disk_budget_bytes=0)  # fmt: skip


def test_a_backend_budget_is_not_overridden(setup: dict[str, Any], tmp_path: Path) -> None:
    infl = EkfacInfluence(setup["model"], regularization=0.1).fit(setup["train"])
    with pytest.raises(ValueError, match=r"EkfacInfluence\(\.\.\., memory_budget=1024\)"):
        ia.InfluenceArray.create(
            tmp_path / "s", infl, test=setup["test"], train=setup["train"], memory_budget=1024
        )
    ia.InfluenceArray.create(  # the same value is no conflict
        tmp_path / "t", infl, test=setup["test"], train=setup["train"], memory_budget=4 << 30
    )


def test_the_default_block_shape_works_for_a_1e7_parameter_model(tmp_path: Path) -> None:
    # ten 1000 x 1000 layers: 1e7 parameters, test factors of 40 MB a sample; within 400 MB
    # the curvature (245 MB) leaves room for one test row at a time, not the old (4, 32)
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, 1000), nn.Tanh()]
    for _ in range(10):
        layers += [nn.Linear(1000, 1000), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(1000, 3)).float().eval()
    x, y = torch.randn(32, 8, dtype=torch.float32), torch.randint(0, 3, (32,))
    infl = EkfacInfluence(model, regularization=0.1, memory_budget=400 << 20).fit((x, y))
    assert infl.test_factor_width == sum(p.numel() for p in model.parameters()) > 10**7
    arr = ia.InfluenceArray.create(tmp_path / "s", infl, test=(x[:4], y[:4]), train=(x, y))
    assert arr.block_shape[0] == 1
    assert arr.fill(progress=False) == 4
    assert infl.budget.high_water <= 400 << 20
    assert np.isfinite(arr[:]).all()


BACKENDS: dict[str, Callable[[nn.Module], Any]] = {
    "direct": lambda m: DirectInfluence(m, CE, 0.1),
    "cg": lambda m: CgInfluence(m, CE, 0.1),
    "lissa": lambda m: LissaInfluence(m, CE, 0.1, maxiter=20),
    "arnoldi": lambda m: ArnoldiInfluence(m, CE, 0.1, rank=3),
    "nystroem": lambda m: NystroemSketchInfluence(m, CE, 0.1, rank=3),
    "datainf": lambda m: InverseHarmonicMeanInfluence(m, CE, 0.1),
    "ekfac": lambda m: EkfacInfluence(m, CE, 0.1),
    "projected": lambda m: ProjectedInfluence(m, CE, 0.1, projection_dim=16),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_create_and_fill_warn_once_per_cause(
    setup: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    train, test = setup["train"], setup["test"]
    with warnings.catch_warnings(record=True) as caught:
        # as in a user's session: pytest's warnings-as-errors filter out (restored after)
        warnings.filters[:] = [f for f in warnings.filters if f[0] != "error"]
        infl = BACKENDS[backend](setup["model"]).fit(train)
        arr = ia.InfluenceArray.create(tmp_path / "s", infl, test=test, train=train)
        arr.fill(progress=False)
        for _ in range(3):  # torch's vmap warning in a pass, between changes of the filters
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
            with warn_once_per_cause():
                warnings.warn(f"{VMAP_PERFORMANCE_WARNING} aten::{backend}.", stacklevel=1)
    counts = Counter((w.category, str(w.message)) for w in caught)
    assert counts and max(counts.values()) == 1, counts
