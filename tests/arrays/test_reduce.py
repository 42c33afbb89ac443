"""Streaming analysis: reductions, top_k and to_dask against numpy on the materialised matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import CountingFn, influence_like
from hypothesis import given, settings
from hypothesis import strategies as st

import infl_array as ia

OPS = ["sum", "mean", "min", "max", "argmin", "argmax"]


def make(full: np.ndarray, block_shape: tuple[int, int] = (4, 3)) -> tuple[Any, CountingFn]:
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(
        {}, fn, shape=full.shape, block_shape=block_shape, dtype=full.dtype.name
    )
    return arr, fn


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_match_numpy(op: str, axis: int | None, dtype: str) -> None:
    full = influence_like((11, 9), seed=3, dtype=dtype)
    arr, _ = make(full)
    got, expected = getattr(arr, op)(axis=axis), getattr(full, op)(axis=axis)
    assert type(got) is type(expected) or isinstance(got, np.ndarray)
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if op.startswith("arg"):
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == "float32" else 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n0=st.integers(1, 12),
    n1=st.integers(1, 12),
    b0=st.integers(1, 13),
    b1=st.integers(1, 13),
    seed=st.integers(0, 2**16),
    levels=st.integers(1, 4),
)
def test_arg_reductions_break_ties_like_numpy(
    n0: int, n1: int, b0: int, b1: int, seed: int, levels: int
) -> None:
    # few distinct values: many ties, which numpy breaks by the first occurrence
    full = np.random.default_rng(seed).integers(0, levels, size=(n0, n1)).astype(np.float32)
    arr, _ = make(full, (b0, b1))
    for op in ("argmin", "argmax", "min", "max"):
        for axis in (None, 0, 1):
            np.testing.assert_array_equal(getattr(arr, op)(axis=axis), getattr(full, op)(axis))


@pytest.mark.parametrize("axis", [2, -3])
def test_bad_axis_is_numpys_axis_error(axis: int) -> None:
    arr, fn = make(influence_like((4, 4)))
    with pytest.raises(np.exceptions.AxisError):
        arr.sum(axis=axis)
    with pytest.raises(IndexError):  # AxisError is an IndexError too
        arr.top_k(1, axis=axis)
    assert fn.calls == []


def test_bad_axis_type() -> None:
    arr, _ = make(influence_like((4, 4)))
    with pytest.raises(TypeError):
        arr.max(axis=1.5)  # type: ignore[arg-type]


def _expected_top_k(full: np.ndarray, k: int, axis: int, largest: bool) -> tuple[Any, Any]:
    data = full if axis == 1 else full.T
    idx = np.broadcast_to(np.arange(data.shape[1]), data.shape)
    order = np.lexsort((idx, -data if largest else data), axis=-1)[:, :k]
    values, indices = np.take_along_axis(data, order, 1), order
    return (values, indices) if axis == 1 else (values.T, indices.T)


@settings(max_examples=80, deadline=None)
@given(
    n0=st.integers(1, 12),
    n1=st.integers(1, 12),
    b0=st.integers(1, 13),
    b1=st.integers(1, 13),
    k=st.integers(0, 12),
    axis=st.sampled_from([0, 1, -1]),
    largest=st.booleans(),
    levels=st.sampled_from([2, 5, 1000]),
    seed=st.integers(0, 2**16),
)
def test_top_k_matches_a_stable_sort(
    n0: int, n1: int, b0: int, b1: int, k: int, axis: int, largest: bool, levels: int, seed: int
) -> None:
    full = np.random.default_rng(seed).integers(0, levels, size=(n0, n1)).astype(np.float32)
    arr, _ = make(full, (b0, b1))
    ax = axis % 2
    if k > full.shape[ax]:
        with pytest.raises(ValueError, match="k must be"):
            arr.top_k(k, axis=axis, largest=largest)
        return
    values, indices = arr.top_k(k, axis=axis, largest=largest)
    exp_values, exp_indices = _expected_top_k(full, k, ax, largest)
    assert values.shape == exp_values.shape == ((n0, k) if ax == 1 else (k, n1))
    assert values.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(values, exp_values)
    np.testing.assert_array_equal(indices, exp_indices)


def test_top_k_agrees_with_torch_topk_values() -> None:
    torch = pytest.importorskip("torch")
    full = influence_like((9, 30), seed=5)
    arr, _ = make(full, (4, 7))
    values, indices = arr.top_k(4)
    t_values, _ = torch.topk(torch.as_tensor(full), 4, dim=1)
    np.testing.assert_array_equal(values, t_values.numpy())
    np.testing.assert_array_equal(np.take_along_axis(full, indices, 1), values)


@pytest.mark.parametrize("k", [-1, 1.0, True, "3"])
def test_bad_k(k: Any) -> None:
    arr, fn = make(influence_like((4, 4)))
    with pytest.raises(ValueError, match="k must be"):
        arr.top_k(k)
    assert fn.calls == []


def test_streaming_computes_each_block_once() -> None:
    full = influence_like((10, 10))
    arr, fn = make(full, (3, 4))
    arr.top_k(2)
    n_blocks = arr.grid_shape[0] * arr.grid_shape[1]
    assert len(fn.calls) == n_blocks
    arr.sum()
    arr.argmax(axis=0)
    assert len(fn.calls) == n_blocks


def test_reductions_on_read_only_store_need_blocks(tmp_path: Any) -> None:
    full = influence_like((6, 6))
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(3, 3)
    )
    arr[:3, :3]
    ro = ia.open(tmp_path / "s")
    with pytest.raises(ia.MissingBlockError):
        ro.sum()


def test_to_dask_is_lazy_and_correct() -> None:
    da = pytest.importorskip("dask.array")
    full = influence_like((10, 7))
    arr, fn = make(full, (4, 3))
    d = arr.to_dask()
    assert isinstance(d, da.Array)
    assert d.shape == full.shape and d.dtype == full.dtype
    assert d.chunks == ((4, 4, 2), (3, 3, 1))
    assert fn.calls == []  # building the graph computes nothing
    np.testing.assert_array_equal(d[5:7, 4].compute(), full[5:7, 4])
    assert fn.calls == [(4, 8, 3, 6)]
    np.testing.assert_allclose(d.sum(axis=0).compute(), full.sum(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(d.compute(), full)
    assert len(fn.calls) == 9


def test_to_dask_threads_compute_each_block_once() -> None:
    pytest.importorskip("dask.array")
    import dask

    full = influence_like((16, 16))
    arr, fn = make(full, (4, 4))
    d = arr.to_dask()
    with dask.config.set(scheduler="threads", num_workers=4):
        # every chunk twice in one graph: a block is still computed once
        total = (d + d.T).sum().compute()
    np.testing.assert_allclose(total, 2 * full.sum(), rtol=1e-5)
    assert len(fn.calls) == len(set(fn.calls)) == 16
