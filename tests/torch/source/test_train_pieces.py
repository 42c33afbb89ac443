"""Train factors too large to keep come in pieces: a block's product holds one piece at a time
(issue 24: EK-FAC train factors of sequence layers are whole gradient matrices)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from models import cnn_data, small_cnn, trained_cnn

import infl_array as ia
from infl_array.torch import EkfacInfluence, MemoryBudgetError


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = cnn_data(40, 0), cnn_data(7, 1)
    model = trained_cnn(small_cnn(), *train)
    whole = EkfacInfluence(model, regularization=0.1).fit(train)
    reference = whole.influences(*test, *train).to(torch.float64).numpy()
    return {"model": model, "train": train, "test": test, "reference": reference}


def _spied(infl: EkfacInfluence) -> list[int]:
    """The sample counts of every ``train_factors`` call ``infl`` gets from now on."""
    sizes: list[int] = []
    original: Callable[..., torch.Tensor] = infl.train_factors

    def spy(x: Any, y: Any) -> torch.Tensor:
        sizes.append(len(x))
        return original(x, y)

    infl.train_factors = spy  # type: ignore[method-assign]
    return sizes


def _fill(setup: dict[str, Any], infl: EkfacInfluence, path: Path, disk: int) -> np.ndarray:
    arr = ia.InfluenceArray.create(
        path,
        infl,
        test=setup["test"],
        train=setup["train"],
        block_shape=(7, 40),
        dtype="float64",
        disk_budget=disk,
    )
    arr.fill(progress=False)
    return np.asarray(arr)


def test_train_factors_larger_than_the_memo_may_keep_come_in_pieces(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    budget = 60_000  # the 40 samples' train factors (31.9 KiB) are more than it can hold
    infl = EkfacInfluence(setup["model"], regularization=0.1, memory_budget=budget)
    infl.fit(setup["train"])
    with pytest.raises(MemoryBudgetError, match="EK-FAC train factors of 40 samples"):
        infl.train_factors(*setup["train"])  # the whole block at once does not fit
    sizes = _spied(infl)
    values = _fill(setup, infl, tmp_path / "pieces", disk=0)
    assert len(sizes) > 1 and sum(sizes) == 40  # consecutive pieces, each sample once
    np.testing.assert_allclose(values, setup["reference"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("disk", [0, 8 << 30], ids=["in-memory", "stored"])
def test_train_factors_that_fit_are_computed_whole(
    setup: dict[str, Any], tmp_path: Path, disk: int
) -> None:
    infl = EkfacInfluence(setup["model"], regularization=0.1).fit(setup["train"])
    sizes = _spied(infl)
    values = _fill(setup, infl, tmp_path / "whole", disk)
    assert sizes == [40]
    np.testing.assert_allclose(values, setup["reference"], rtol=1e-10, atol=1e-12)
