"""``arr.with_test``: a new test set against stored train factors, with no train-side work."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from models import REG, cnn_data, small_cnn, trained_cnn

import infl_array as ia
from infl_array.torch import EkfacInfluence, ProjectedInfluence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE = F.cross_entropy
BLOCK = (4, 8)


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test, other = cnn_data(20, 0), cnn_data(6, 1), cnn_data(5, 2)
    model = trained_cnn(small_cnn(), *train)
    return {"model": model, "train": train, "test": test, "other": other}


def backends(model: torch.nn.Module, train: Any) -> dict[str, Any]:
    return {
        "projected": ProjectedInfluence(model, CE, REG, projection_dim=64).fit(train),
        "ekfac": EkfacInfluence(model, CE, REG, update_diagonal=True).fit(train),
    }


@pytest.mark.parametrize("backend", ["projected", "ekfac"])
def test_new_test_set_reads_stored_train_factors(
    setup: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    infl = backends(setup["model"], setup["train"])[backend]
    kw = {"train": setup["train"], "block_shape": BLOCK, "dtype": "float64"}
    arr = ia.InfluenceArray.create(tmp_path / "a", infl, test=setup["test"], **kw)
    arr.fill(progress=False)
    assert arr.stats.train_factors > 0
    new = arr.with_test(setup["other"], tmp_path / "b")
    assert new.shape == (5, 20) and new.block_shape == BLOCK and new.dtype == np.float64
    new.fill(progress=False)
    stats = new.stats
    assert stats.train_factors == 0  # every train factor block read from arr's store
    assert stats.factor_reads == 3 and stats.test_factors > 0  # 20 train points / 8 per block
    fresh = ia.InfluenceArray.create(tmp_path / "c", infl, test=setup["other"], **kw)
    np.testing.assert_allclose(new[:], fresh[:], rtol=1e-12, atol=1e-15)
    assert not (tmp_path / "b" / "factors" / "train").exists()


def test_train_factors_missing_are_computed_once_into_the_first_store(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    infl = backends(setup["model"], setup["train"])["projected"]
    arr = ia.InfluenceArray.create(
        tmp_path / "a", infl, test=setup["test"], train=setup["train"], block_shape=BLOCK
    )
    arr[:, :8]  # train block 0 only
    first = arr.with_test(setup["other"], tmp_path / "b")
    first.fill(progress=False)
    assert first.stats.train_factors > 0 and first.stats.factor_reads == 1
    second = arr.with_test(setup["test"], tmp_path / "c")
    second.fill(progress=False)
    assert second.stats.train_factors == 0 and second.stats.factor_reads == 3
    np.testing.assert_array_equal(second[:], arr[:])


def test_errors(setup: dict[str, Any], tmp_path: Path) -> None:
    infl = backends(setup["model"], setup["train"])["projected"]
    arr = ia.InfluenceArray.create(
        tmp_path / "a", infl, test=setup["test"], train=setup["train"], block_shape=BLOCK
    )
    with pytest.raises(ValueError, match=r"needs a new store.*pass another path"):
        arr.with_test(setup["other"], tmp_path / "a", overwrite=True)
    assert arr[:1, :1].shape == (1, 1)  # the first store is untouched
    with pytest.raises(TypeError, match=r"opened without its model.*ia\.open"):
        ia.open(tmp_path / "a").with_test(setup["other"], tmp_path / "b")
    fn = ia.InfluenceArray.from_function(
        tmp_path / "f", lambda r, c: np.ones((len(r), len(c))), (2, 3)
    )
    with pytest.raises(TypeError, match="not model-backed"):
        fn.with_test(setup["other"], tmp_path / "b")
    x, y = setup["other"]
    with pytest.raises(ValueError, match="test is empty"):
        arr.with_test((x[:0], y[:0]), tmp_path / "b")
    # the new test data are checked as create checks them, before a store is made (issue 21)
    with pytest.raises(ValueError, match=r"expected input.*to have 2 channels"):
        arr.with_test((x[:, :1], y), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_float32_model_stores_float32_factors(setup: dict[str, Any], tmp_path: Path) -> None:
    model = copy.deepcopy(setup["model"]).float()
    train, test = ((x.float(), y) for x, y in (setup["train"], setup["test"]))
    infl = ProjectedInfluence(model, CE, REG, projection_dim=64).fit(train)
    arr = ia.InfluenceArray.create(tmp_path / "a", infl, test=test, train=train, block_shape=BLOCK)
    arr.fill(progress=False)
    factors = zarr.open_group(tmp_path / "a", mode="r")["factors"]
    assert factors["train"].dtype == factors["test"].dtype == np.float32
    assert factors["train"].shape == (20, infl.width)
    expected = infl.test_factors(*test) @ infl.train_factors(*train).T
    scale = float(expected.abs().max())  # float32 rounding, relative to the largest value
    np.testing.assert_allclose(arr[:], expected.numpy(), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", ["projected", "ekfac"])
def test_fitted_backend_pickles_for_fill_workers(setup: dict[str, Any], backend: str) -> None:
    infl = backends(setup["model"], setup["train"])[backend]
    again = pickle.loads(pickle.dumps(infl))
    x, y = setup["other"]
    torch.testing.assert_close(again.test_factors(x, y), infl.test_factors(x, y), rtol=0, atol=0)
    torch.testing.assert_close(again.train_factors(x, y), infl.train_factors(x, y), rtol=0, atol=0)
