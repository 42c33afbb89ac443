"""Appending to model-backed arrays: the grown array equals a fresh one over the joined data
with the same fitted backend (the curvature stays the one fitted), computing only what is new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FeatureFactors, brute_top_k, integer_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import REG, cnn_data, small_cnn, trained_cnn

import infl_array as ia
from infl_array.torch import DirectInfluence, EkfacInfluence, ProjectedInfluence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE = F.cross_entropy
BLOCK = (4, 8)


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, more, test, test_more = cnn_data(20, 0), cnn_data(7, 3), cnn_data(6, 1), cnn_data(3, 2)
    model = trained_cnn(small_cnn(), *train)
    return {"model": model, "train": train, "more": more, "test": test, "test_more": test_more}


def backend(name: str, model: torch.nn.Module, train: Any) -> Any:
    if name == "projected":
        return ProjectedInfluence(model, CE, REG, projection_dim=64).fit(train)
    if name == "ekfac":
        return EkfacInfluence(model, CE, REG, update_diagonal=True).fit(train)
    return DirectInfluence(model, CE, 0.1).fit(train)  # positive definite at 0.1


def cat(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["projected", "ekfac", "direct"])
def test_grown_array_equals_a_fresh_one_with_the_same_fit(
    setup: dict[str, Any], tmp_path: Path, name: str
) -> None:
    infl = backend(name, setup["model"], setup["train"])
    kw = {"block_shape": BLOCK, "dtype": "float64"}
    arr = ia.InfluenceArray.create(
        tmp_path / "a", infl, test=setup["test"], train=setup["train"], **kw
    )
    arr.fill(progress=False)
    si = np.asarray(arr.self_influence())
    tk = arr.top_k_array(5)
    tk.fill(progress=False)
    before = arr.stats
    arr.append_train(setup["more"])
    arr.append_test(setup["test_more"])
    assert arr.shape == (9, 27)
    # 20 train points in blocks of 8: block 2 (16:20) was partial; 6 test points in blocks of 4
    assert (
        arr.computed[:1, :2].all() and not arr.computed[1:].any() and not arr.computed[:, 2:].any()
    )
    assert arr.fill(progress=False) == 3 * 4 - 2
    train, test = cat(setup["train"], setup["more"]), cat(setup["test"], setup["test_more"])
    fresh = ia.InfluenceArray.create(tmp_path / "b", infl, test=test, train=train, **kw)
    expected = np.asarray(fresh)
    np.testing.assert_allclose(np.asarray(arr), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(arr.self_influence()[:16], si[:16], rtol=0, atol=0)
    np.testing.assert_allclose(
        np.asarray(arr.self_influence()), np.asarray(fresh.self_influence()), rtol=1e-10, atol=1e-13
    )
    values, indices = brute_top_k(np.asarray(arr), 5, 1, True)
    tk = arr.top_k_array(5)
    np.testing.assert_array_equal(tk.indices[:], indices)
    # the top-k scan multiplies the factors in its own tiles: equal up to the last bit or so of
    # a float64 product (1 ulp seen under load), not bitwise
    np.testing.assert_allclose(tk.values[:], values, rtol=1e-13, atol=0)
    reopened = ia.open(tmp_path / "a", infl, test=test, train=train)
    assert reopened.shape == (9, 27) and reopened.fill(progress=False) == 0
    assert before.train_factors > 0


def test_only_new_factors_are_computed(setup: dict[str, Any], tmp_path: Path) -> None:
    infl = backend("projected", setup["model"], setup["train"])
    train = cat(setup["train"], cnn_data(4, 5))[:2]
    arr = ia.InfluenceArray.create(
        tmp_path / "a", infl, test=setup["test"], train=train, block_shape=BLOCK
    )
    arr.fill(progress=False)
    arr.append_train(setup["more"])  # 24 train points: blocks aligned, 7 new in one block
    assert arr.fill(progress=False) == 2
    stats = arr.stats
    assert (stats.train_factors, stats.test_factors, stats.factor_reads) == (1, 0, 2)


def test_workers_fill_the_new_blocks(setup: dict[str, Any], tmp_path: Path) -> None:
    infl = backend("projected", setup["model"], setup["train"])
    arr = ia.InfluenceArray.create(
        tmp_path / "a", infl, test=setup["test"], train=setup["train"], block_shape=BLOCK
    )
    arr.fill(progress=False)
    arr.top_k_array(3).fill(progress=False)
    arr.append_train(setup["more"])
    tk = arr.top_k_array(3)
    assert tk.fill(progress=False, workers=2) == 2  # both row blocks, from their bases
    assert arr.fill(progress=False, workers=2) == 2 * 2  # block columns 2 (partial) and 3
    assert arr.computed.all() and arr.store_report().ok
    train = cat(setup["train"], setup["more"])
    fresh = ia.InfluenceArray.create(tmp_path / "b", infl, test=setup["test"], train=train)
    np.testing.assert_allclose(np.asarray(arr), np.asarray(fresh), rtol=1e-5, atol=1e-7)
    values, indices = brute_top_k(np.asarray(arr), 3, 1, True)
    np.testing.assert_array_equal(tk.indices[:], indices)
    np.testing.assert_array_equal(tk.values[:], values)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.tuples(st.integers(1, 7), st.integers(1, 9)),
    grow=st.lists(st.tuples(st.sampled_from(["test", "train"]), st.integers(1, 6)), max_size=3),
    block=st.tuples(st.integers(1, 4), st.integers(1, 5)),
    read_first=st.booleans(),
    seed=st.integers(0, 5),
)
def test_append_then_index_equals_numpy(
    n: tuple[int, int],
    grow: list[tuple[str, int]],
    block: tuple[int, int],
    read_first: bool,
    seed: int,
) -> None:
    data = {"test": integer_data(n[0], 2, seed), "train": integer_data(n[1], 2, seed + 1)}
    arr = ia.InfluenceArray.create({}, FeatureFactors(), block_shape=block, **data)
    k, k0 = min(2, n[1]), min(2, n[0])
    if read_first:
        arr[::2, 1:]
        arr.top_k_array(k).values[:]
        arr.top_k_array(k0, axis=0, largest=False).values[:1]
    for step, (side, m) in enumerate(grow):
        more = integer_data(m, 2, seed + 10 + step)
        arr.append_train(more) if side == "train" else arr.append_test(more)
        data[side] = tuple(np.concatenate([a, b]) for a, b in zip(data[side], more, strict=True))
        if read_first:
            arr[-1, ::3]
    full = data["test"][0] @ data["train"][0].T
    assert arr.shape == full.shape
    np.testing.assert_array_equal(arr[::-2, 1:], full[::-2, 1:])
    np.testing.assert_array_equal(np.asarray(arr), full)
    values, indices = brute_top_k(full, k, 1, True)
    np.testing.assert_array_equal(arr.top_k_array(k).indices[:], indices)
    np.testing.assert_array_equal(arr.top_k_array(k).values[:], values)
    values, indices = brute_top_k(full, k0, 0, False)
    np.testing.assert_array_equal(arr.top_k_array(k0, axis=0, largest=False).indices[:].T, indices)
    np.testing.assert_array_equal(arr.top_k_array(k0, axis=0, largest=False).values[:].T, values)
