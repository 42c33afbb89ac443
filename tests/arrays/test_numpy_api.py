"""numpy's functions, operators and interop on lazy arrays, against numpy on the matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import CountingFn, influence_like

import infl_array as ia

FUNCS = [np.sum, np.mean, np.max, np.min, np.argmax, np.argmin, np.std, np.var, np.amax, np.amin]


def make(full: np.ndarray, block_shape: tuple[int, int] = (4, 3)) -> tuple[Any, CountingFn]:
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(
        {}, fn, shape=full.shape, block_shape=block_shape, dtype=full.dtype.name
    )
    return arr, fn


def _close(got: Any, expected: Any, dtype: str) -> None:
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if np.asarray(expected).dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=2e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("func", FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_functions_match_numpy(func: Any, axis: Any, keepdims: bool, dtype: str) -> None:
    full = influence_like((11, 9), seed=4, dtype=dtype)
    arr, _ = make(full)
    _close(func(arr, axis=axis, keepdims=keepdims), func(full, axis=axis, keepdims=keepdims), dtype)


@pytest.mark.parametrize("func", [np.sum, np.mean, np.std, np.var], ids=lambda f: f.__name__)
@pytest.mark.parametrize("out_dtype", ["float32", "float64"])
def test_dtype_and_out(func: Any, out_dtype: str) -> None:
    full = influence_like((7, 10), seed=5)
    arr, _ = make(full)
    _close(func(arr, axis=0, dtype=out_dtype), func(full, axis=0, dtype=out_dtype), "float32")
    out = np.empty(7, dtype=out_dtype)
    got = func(arr, 1, None, out)  # positional, as numpy passes them
    assert got is out
    np.testing.assert_allclose(out, func(full, axis=1), rtol=2e-5)


@pytest.mark.parametrize("func", [np.max, np.argmax, np.min, np.argmin], ids=lambda f: f.__name__)
def test_out_of_extremes(func: Any) -> None:
    full = influence_like((7, 10), seed=6)
    arr, _ = make(full)
    out = np.empty(10, dtype=func(full, axis=0).dtype)
    assert func(arr, axis=0, out=out) is out
    np.testing.assert_array_equal(out, func(full, axis=0))
    with pytest.raises(ValueError, match="shape"):
        func(arr, axis=0, out=np.empty(3, dtype=out.dtype))


def test_std_is_accurate_far_from_zero() -> None:
    full = (1e4 + influence_like((40, 30), seed=7, dtype="float64")).astype(np.float64)
    arr, _ = make(full, (7, 4))
    np.testing.assert_allclose(np.std(arr), np.std(full), rtol=1e-10)
    np.testing.assert_allclose(np.var(arr, axis=1, ddof=1), np.var(full, axis=1, ddof=1), rtol=1e-9)


def test_reductions_compute_each_block_once() -> None:
    full = influence_like((11, 9), seed=8)
    arr, fn = make(full)
    np.mean(arr, axis=0)
    np.std(arr)
    assert len(fn.calls) == arr.grid_shape[0] * arr.grid_shape[1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: np.median(a), "np.median"),
        (lambda a: np.sort(a, axis=1), "np.sort"),
        (lambda a: np.exp(a), "np.exp"),
        (lambda a: np.allclose(a, 0), "np.allclose"),
        (lambda a: a == a, "=="),
        (lambda a: a != 0, "!="),
        (lambda a: a < 1, "<"),
        (lambda a: a + 1, r"\+"),
        (lambda a: 1 + a, r"operator \+"),
        (lambda a: np.float64(2.0) * a, "np.multiply"),
        (lambda a: np.ones((11, 9)) - a, "np.subtract"),
        (lambda a: a @ np.ones(9), "@"),
        (lambda a: -a, "unary -"),
        (lambda a: a.astype(np.float64), "astype"),
    ],
)
def test_whole_array_operations_are_never_implicit(call: Any, match: str) -> None:
    full = influence_like((11, 9), seed=9)
    arr, fn = make(full)
    with pytest.raises(TypeError, match=match) as info:
        call(arr)
    assert "to_dask()" in str(info.value) and "np.asarray" in str(info.value)
    assert fn.calls == []  # nothing was computed


def test_truth_value_is_ambiguous_like_numpy() -> None:
    arr, _ = make(influence_like((3, 3)))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(arr)


@pytest.mark.parametrize("kw", [{"where": True}, {"initial": 0.0}])
def test_unsupported_keywords_are_named(kw: dict[str, Any]) -> None:
    arr, fn = make(influence_like((3, 3)))
    with pytest.raises(TypeError, match=next(iter(kw))):
        np.sum(arr, **kw)
    assert fn.calls == []


def test_metadata_functions_and_chunks() -> None:
    full = influence_like((11, 9))
    arr, fn = make(full)
    assert np.shape(arr) == (11, 9) and np.ndim(arr) == 2 and np.size(arr) == 99
    assert np.result_type(arr, np.float64) == np.float64
    assert arr.chunks == (4, 3)
    assert hash(arr) == hash(arr)
    assert fn.calls == []


def test_dask_from_array_aligns_to_blocks_and_stays_lazy() -> None:
    da = pytest.importorskip("dask.array")
    full = influence_like((40, 30), seed=10)
    arr, fn = make(full, (8, 6))
    lazy = da.from_array(arr, chunks=(16, 12))
    assert fn.calls == []
    np.testing.assert_array_equal(lazy[:8, :6].compute(), full[:8, :6])
    assert len(fn.calls) == 1
    np.testing.assert_array_equal(lazy.compute(), full)


T_KEYS = [
    5,
    -1,
    (slice(None, None, -2), 3),
    ([4, 0, 4], slice(1, 8, 3)),
    (np.array([[1], [7]]), np.array([0, 10])),
    (Ellipsis, None, 2),
    (np.arange(9) % 2 == 0,),
    (slice(2, 5), [True, False] * 5 + [True]),
]


@pytest.mark.parametrize("key", T_KEYS, ids=[str(i) for i in range(len(T_KEYS))])
def test_transposed_view_indexes_like_numpy(key: Any) -> None:
    full = influence_like((11, 9), seed=11)
    arr, _ = make(full)
    assert arr.T.shape == (9, 11) and arr.T.T is arr and arr.T.chunks == (3, 4)
    got, expected = arr.T[key], full.T[key]
    assert np.shape(got) == np.shape(expected)
    np.testing.assert_array_equal(got, expected)


def test_transposed_view_reduces_like_numpy() -> None:
    full = np.random.default_rng(0).integers(0, 3, size=(11, 9)).astype(np.float32)  # ties
    arr, fn = make(full)
    for func in (np.sum, np.max, np.argmax, np.argmin, np.std):
        for axis in (None, 0, 1):
            _close(func(arr.T, axis=axis), func(full.T, axis=axis), "float32")
    values, indices = arr.T.top_k(2, axis=1)
    order = np.lexsort((np.arange(11)[None, :].repeat(9, 0), -full.T), axis=1)[:, :2]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(values, np.take_along_axis(full.T, order, axis=1))
    np.testing.assert_array_equal(np.asarray(arr.T), full.T)
    assert len(fn.calls) == arr.grid_shape[0] * arr.grid_shape[1]  # each block once


def test_iteration_and_pandas() -> None:
    pd = pytest.importorskip("pandas")
    full = influence_like((7, 5), seed=12)
    arr, _ = make(full)
    np.testing.assert_array_equal(np.stack(list(arr)), full)
    np.testing.assert_array_equal(pd.DataFrame(arr).to_numpy(), full)


def test_xarray_wraps_the_array_lazily() -> None:
    xr = pytest.importorskip("xarray")
    full = influence_like((11, 9), seed=13, dtype="float64")
    arr, fn = make(full)
    data = xr.DataArray(arr, dims=("test", "train"))
    np.testing.assert_array_equal(data.isel(test=2).values, full[2])
    assert len(fn.calls) == 3  # one block row
    np.testing.assert_allclose(data.mean("test").values, full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(data.std().values, full.std(), rtol=1e-12)
    lazy = xr.DataArray(arr.to_dask(), dims=("test", "train"))  # the documented route
    np.testing.assert_array_equal(lazy.load().values, full)
