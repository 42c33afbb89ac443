"""A bad sample past the first ones is named by its data set and index (issue 21): a label
out of range, a NaN input. The first samples are checked up front (tests/torch/data); these
are found when their range is computed, by bisecting the range that failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import infl_array as ia
from infl_array.errors import SampleError
from infl_array.torch import DirectInfluence, EkfacInfluence
from infl_array.torch.source.blame import blamed, first_failing


def fitted(backend: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    if backend == "direct":
        inf = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=1e-2)
    else:
        inf = EkfacInfluence(model, regularization=1e-2)
    return inf.fit((x, y)), x, y


@pytest.mark.parametrize("backend", ["direct", "ekfac"])
def test_a_train_label_out_of_range_names_the_train_sample(tmp_path: Path, backend: str) -> None:
    inf, x, y = fitted(backend)
    bad = y.clone()
    bad[25] = 3  # three classes: 0..2
    arr = ia.InfluenceArray.create(
        tmp_path / "s", inf, test=(x[:10], y[:10]), train=(x, bad), block_shape=(8, 16)
    )
    np.asarray(arr[:, :16])  # the first train block is fine
    with pytest.raises(SampleError, match=r"train sample 25 cannot be used") as info:
        arr[:, 16:]
    assert info.value.data == "train" and info.value.index == 25
    assert "out of bounds" in str(info.value) and "fix or drop train sample 25" in str(info.value)


@pytest.mark.parametrize("backend", ["direct", "ekfac"])
def test_a_nan_test_row_names_the_test_sample(tmp_path: Path, backend: str) -> None:
    inf, x, y = fitted(backend)
    test_x = x[:10].clone()
    test_x[7, 1] = float("nan")
    arr = ia.InfluenceArray.create(
        tmp_path / "s", inf, test=(test_x, y[:10]), train=(x, y), block_shape=(8, 16)
    )
    with pytest.raises(SampleError, match=r"test sample 7 cannot be used") as info:
        arr[:8]
    assert info.value.data == "test" and info.value.index == 7
    assert "non-finite" in str(info.value)


def test_an_error_of_no_single_sample_is_raised_unchanged() -> None:
    def every(r: range) -> None:
        raise RuntimeError("the model is broken")

    def together(r: range) -> None:
        if len(r) > 2:
            raise RuntimeError("too many at once")

    for run in (every, together):
        with pytest.raises(RuntimeError, match=r"broken|at once"):
            blamed(run, range(10, 20), "train", "something")

    def one_bad(r: range) -> int:
        if 13 in r:
            raise IndexError("bad label")
        return len(r)

    assert first_failing(one_bad, range(10, 20)) == 13
    assert first_failing(one_bad, range(13, 14)) == 13
    assert blamed(one_bad, range(0, 5), "test", "something") == 5
