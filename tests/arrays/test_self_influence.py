"""Self-influence: lazy, cached in the same group, numpy 1-D indexing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import infl_array as ia
from infl_array.torch import DirectInfluence


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Any, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    model = torch.nn.Linear(4, 3).double()
    influence = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=0.1)
    influence.fit((x, y))
    return tmp_path / "store", influence, (x, y)


def test_self_influence_is_the_diagonal_and_cached(setup: Any) -> None:
    store, influence, data = setup
    arr = ia.InfluenceArray.create(
        store, influence, test=data, train=data, block_shape=(16, 16), dtype="float64"
    )
    si = arr.self_influence()
    assert si.shape == (50,) and si.ndim == 1 and len(si) == 50 and si.dtype == np.float64
    value = si[3]
    assert isinstance(value, np.float64)
    assert si.stats.blocks_computed == 1  # only the block holding train point 3
    html = si._repr_html_()  # the notebook's view: one row of 4 blocks, 1 computed
    assert "SelfInfluenceArray" in html and "(50,)" in html and "1/4 blocks computed" in html
    diag = np.diag(np.asarray(arr))
    np.testing.assert_allclose(np.asarray(si), diag, rtol=1e-10)
    assert (diag > 0).all()
    z = zarr.open_group(store, mode="r")["self_influence"]
    assert isinstance(z, zarr.Array) and z.shape == (50,) and z.chunks == (16,)
    np.testing.assert_allclose(z[:], diag, rtol=1e-10)
    reopened = ia.open(store).self_influence()  # read-only: reads the cache
    np.testing.assert_array_equal(np.asarray(reopened), np.asarray(si))


@pytest.mark.parametrize(
    "key",
    [5, -1, slice(None, None, -3), [4, 4, 0], np.array([[1], [49]]), None, Ellipsis, (), True],
)
def test_self_influence_indexing_matches_numpy(setup: Any, key: Any) -> None:
    store, influence, data = setup
    arr = ia.InfluenceArray.create(store, influence, test=data, train=data, block_shape=(7, 9))
    si = arr.self_influence()
    full = np.asarray(si)
    got, expected = si[key], full[key]
    assert np.shape(got) == np.shape(expected)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("key", "error"), [(50, IndexError), ((1, 2), IndexError), (1.5, IndexError)]
)
def test_self_influence_bad_keys(setup: Any, key: Any, error: type) -> None:
    store, influence, data = setup
    si = ia.InfluenceArray.create(store, influence, test=data, train=data).self_influence()
    with pytest.raises(error):
        si[key]
    assert si.stats.blocks_computed == 0


def test_self_influence_needs_the_model(setup: Any) -> None:
    store, influence, data = setup
    arr = ia.InfluenceArray.create(store, influence, test=data, train=data, block_shape=(16, 16))
    arr.self_influence()[0]
    ro = ia.open(store).self_influence()
    assert np.isfinite(ro[:16]).all()
    with pytest.raises(ia.MissingBlockError, match="self-influence block 2"):
        ro[40]
    with pytest.raises(TypeError, match="read-only"):
        ro[0] = 1.0
