"""DirectInfluence's explicit curvature is held in the memory budget (issue 21): its build
reserves the ``p x p`` matrices it makes before making them, so a model too large for the budget
is refused naming the curvature and a matrix-free backend (a 1e5-parameter model used to ask
the allocator for 44 GB whatever the budget), and a model that fits gives the same values."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from models import cnn_data, small_cnn, trained_cnn
from torch import nn

import infl_array as ia
from infl_array.torch import DirectInfluence, MemoryBudgetError
from infl_array.torch.full.base import SNAPSHOT
from infl_array.torch.full.param_blocks import BlockMode

CE = nn.functional.cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = cnn_data(30, 0), cnn_data(4, 1)
    return {"model": trained_cnn(small_cnn(), *train), "train": train, "test": test}


def _direct(setup: dict[str, Any], budget: int, **kw: Any) -> DirectInfluence:
    return DirectInfluence(setup["model"], CE, 0.1, memory_budget=budget, **kw).fit(setup["train"])


@pytest.mark.parametrize("blocks", [BlockMode.FULL, BlockMode.LAYER_WISE])
def test_the_build_reserves_its_peak_and_gives_the_same_values(
    setup: dict[str, Any], blocks: BlockMode
) -> None:
    roomy = _direct(setup, 4 << 30, block_structure=blocks)
    need = roomy._build_bytes()
    p = roomy.n_params
    assert need >= 3 * p * p * roomy._itemsize
    want = roomy.test_factors(*setup["test"])
    assert roomy.budget.high_water >= need
    peak = roomy.budget.high_water  # the build, and the curvature pass's own working space
    tight = _direct(setup, peak + peak // 8, block_structure=blocks)
    torch.testing.assert_close(tight.test_factors(*setup["test"]), want, rtol=0, atol=0)
    assert need <= tight.budget.high_water <= tight.budget.total


def test_a_model_too_large_for_the_budget_is_refused_before_anything_is_built(
    setup: dict[str, Any], tmp_path: Any
) -> None:
    infl = _direct(setup, 200_000)
    p = infl.n_params
    assert infl._build_bytes() > infl.budget.total
    arr = ia.InfluenceArray.create(
        tmp_path / "s", infl, test=setup["test"], train=setup["train"], block_shape=(4, 10)
    )
    with pytest.raises(MemoryBudgetError, match=r"explicit curvature") as caught:
        arr[:1, :1]
    message = str(caught.value)
    assert f"{p:,} x {p:,}" in message and "CgInfluence" in message
    assert "memory_budget" in message
    assert not infl.is_prepared and infl._hessian is None
    assert set(infl.budget.holders()) == {SNAPSHOT}  # the fitted parameters only
    assert not arr.computed.any()
