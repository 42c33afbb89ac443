"""Model-backed arrays end to end: create, values, data forms, reopen, staleness, workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from models import adam_fit, tanh_mlp
from torch.utils.data import DataLoader, TensorDataset

import infl_array as ia
from infl_array.torch import CgInfluence, DirectInfluence


def _problem(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    model = adam_fit(tanh_mlp(4, 5, 3, seed=seed), x, y, lr=0.05, steps=100)
    return {"model": model, "train": (x[:30], y[:30]), "test": (x[30:], y[30:])}


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    return _problem()


def _direct(problem: dict[str, Any]) -> DirectInfluence:
    loss = torch.nn.functional.cross_entropy
    return DirectInfluence(problem["model"], loss, regularization=0.05).fit(problem["train"])


def _create(tmp_path: Path, problem: dict[str, Any], **kwargs: Any) -> Any:
    """A store at ``tmp_path / "s"`` of the problem's Direct influence."""
    return ia.InfluenceArray.create(
        tmp_path / "s", _direct(problem), test=problem["test"], train=problem["train"], **kwargs
    )


def _reference(problem: dict[str, Any]) -> np.ndarray:
    infl = _direct(problem)
    return infl.influences(*problem["test"], *problem["train"]).detach().numpy()


@pytest.mark.parametrize("block_shape", [(1, 1), (3, 7), (10, 30), (64, 64)])
def test_values_equal_the_backend_whatever_the_block_shape(
    tmp_path: Path, problem: dict[str, Any], block_shape: tuple[int, int]
) -> None:
    arr = _create(tmp_path, problem, block_shape=block_shape, dtype="float64")
    assert arr.shape == (10, 30)
    np.testing.assert_allclose(np.asarray(arr), _reference(problem), rtol=1e-10, atol=1e-14)


def test_every_data_form_gives_the_same_store(tmp_path: Path, problem: dict[str, Any]) -> None:
    x, y = problem["test"]
    forms = {
        "tensors": (x, y),
        "numpy": (x.numpy(), y.numpy()),
        "dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=4),
    }
    expected = _reference(problem)
    prints = set()
    for name, test in forms.items():
        arr = ia.InfluenceArray.create(
            tmp_path / name, _direct(problem), test=test, train=problem["train"], dtype="float64"
        )
        np.testing.assert_allclose(arr[:, :], expected, rtol=1e-10, atol=1e-14)
        prints.add(arr.meta.fingerprints["test"])
    assert len(prints) == 1


def test_reopen_with_an_equal_model_computes_nothing(
    tmp_path: Path, problem: dict[str, Any]
) -> None:
    arr = _create(
        tmp_path,
        problem,
        block_shape=(4, 8),
    )
    arr.fill(progress=False)
    again = _problem()  # the same model and data, rebuilt: new objects
    reopened = ia.open(tmp_path / "s", _direct(again), test=again["test"], train=again["train"])
    np.testing.assert_array_equal(np.asarray(reopened), np.asarray(arr))
    assert reopened.stats.blocks_computed == 0
    assert reopened.stats.test_factors == 0


def test_stale_model_data_and_backend(tmp_path: Path, problem: dict[str, Any]) -> None:
    _create(tmp_path, problem)
    other = _problem(seed=1)
    with pytest.raises(ia.StaleCacheError, match="model") as info:
        ia.open(tmp_path / "s", _direct(other), test=problem["test"], train=problem["train"])
    assert "model" in info.value.differences
    x, y = problem["train"]
    changed = (x.clone(), y.clone())
    changed[0][3, 1] += 1e-3
    with pytest.raises(ia.StaleCacheError) as info:
        ia.open(tmp_path / "s", _direct(problem), test=problem["test"], train=changed)
    assert info.value.differences == ["train"]
    cg = CgInfluence(problem["model"], torch.nn.functional.cross_entropy, regularization=0.05)
    with pytest.raises(ia.StaleCacheError, match="backend"):
        ia.open(
            tmp_path / "s", cg.fit(problem["train"]), test=problem["test"], train=problem["train"]
        )
    with pytest.raises(ia.StaleCacheError, match="computed_by"):
        ia.open(tmp_path / "s", fn=lambda r, c: np.zeros((len(r), len(c))))


def test_create_over_existing_store_computes_nothing(
    tmp_path: Path, problem: dict[str, Any]
) -> None:
    infl = _direct(problem)
    ia.InfluenceArray.create(tmp_path / "s", infl, test=problem["test"], train=problem["train"])
    with pytest.raises(FileExistsError):
        ia.InfluenceArray.create(tmp_path / "s", "not even a model", test=None, train=None)


def test_fill_with_process_workers_on_a_model(tmp_path: Path, problem: dict[str, Any]) -> None:
    arr = _create(
        tmp_path,
        problem,
        block_shape=(3, 10),
        dtype="float64",
    )
    assert arr.fill(progress=False, workers=2) == 4 * 3
    np.testing.assert_allclose(
        ia.open(tmp_path / "s")[:, :], _reference(problem), rtol=1e-10, atol=1e-14
    )


def test_open_needs_both_data_sets(tmp_path: Path, problem: dict[str, Any]) -> None:
    _create(tmp_path, problem)
    with pytest.raises(TypeError, match="both data sets"):
        ia.open(tmp_path / "s", _direct(problem), test=problem["test"])
    with pytest.raises(TypeError, match="without a model"):
        ia.open(tmp_path / "s", test=problem["test"], train=problem["train"])


def test_fill_solves_each_tile_once_and_gradients_once(
    tmp_path: Path, problem: dict[str, Any]
) -> None:
    arr = _create(
        tmp_path,
        problem,
        block_shape=(3, 10),
        dtype="float64",
    )
    arr.fill(progress=False)
    stats = arr.stats
    # 4 block rows x 3 block columns, one column group: one batched solve for all test rows;
    # gradients of the first block column (sizing the tiles), then of the other two in one call
    assert stats.test_factors == 1 and stats.train_factors == 2
    np.testing.assert_allclose(np.asarray(arr), _reference(problem), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("stored", [True, False])
def test_a_small_factor_budget_degrades_to_more_tiles(
    tmp_path: Path, problem: dict[str, Any], stored: bool
) -> None:
    n_params = _direct(problem).n_params
    row_bytes = 3 * n_params * 8  # a block row of test factors: 3 points, float64
    column_bytes = 10 * n_params * 8  # a train block column
    arr = _create(
        tmp_path,
        problem,
        block_shape=(3, 10),
        dtype="float64",
        factor_budget_bytes=2 * column_bytes + 2 * row_bytes,  # tiles of two block rows
        factor_disk_budget_bytes=(1 << 30) if stored else 0,
    )
    arr.fill(progress=False)
    stats = arr.stats
    assert stats.test_factors == 2  # two tiles, one solve each
    if stored:  # the second tile reads the train factors the first one stored
        assert (stats.train_factors, stats.factor_reads) == (3, 3)
    else:  # kept in memory only: gradients once per tile
        assert (stats.train_factors, stats.factor_reads) == (2 * 3, 0)
    np.testing.assert_allclose(np.asarray(arr), _reference(problem), rtol=1e-10, atol=1e-14)


def test_stored_factors_make_a_resumed_fill_compute_no_factor_twice(
    tmp_path: Path, problem: dict[str, Any]
) -> None:
    arr = _create(tmp_path, problem, block_shape=(3, 10), dtype="float64")
    arr[:3]  # block row 0: its test factors and every train block
    reopened = ia.open(
        tmp_path / "s", _direct(problem), test=problem["test"], train=problem["train"]
    )
    reopened.fill(progress=False)
    stats = reopened.stats
    assert stats.train_factors == 0 and stats.factor_reads == 3  # the three train blocks
    assert stats.test_factors == 1  # block rows 1-3 in one solve; row 0 was not needed
    np.testing.assert_allclose(np.asarray(reopened), _reference(problem), rtol=1e-10, atol=1e-14)
    factors = zarr.open_group(tmp_path / "s", mode="r")["factors"]
    n_params = _direct(problem).n_params
    assert factors["train"].shape == (30, n_params) and factors["test"].shape == (10, n_params)


def test_float32_store_of_a_float32_model(tmp_path: Path, problem: dict[str, Any]) -> None:
    model32 = _problem()["model"].float()
    x, y = problem["train"]
    infl = DirectInfluence(model32, torch.nn.functional.cross_entropy, regularization=0.05)
    infl.fit((x.float(), y))
    test = (problem["test"][0].float(), problem["test"][1])
    arr = ia.InfluenceArray.create(
        tmp_path / "s", infl, test=test, train=(x.float(), y), block_shape=(4, 8)
    )
    got = np.asarray(arr)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(problem), rtol=2e-3, atol=1e-5)
