"""Tests of infl_array.arrays.indexing against numpy (``full[key]``) and zarr (``oindex``)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import index_case, numbered_matrix, structured_case

from infl_array.arrays.indexing import AxisSel, axis_len, get_oindex, getitem


def _check_sel(sel: AxisSel, n: int) -> None:
    """Assert that ``sel`` satisfies the AxisSel contract for an axis of length ``n``."""
    if isinstance(sel, slice):
        for v in (sel.start, sel.stop, sel.step):
            assert type(v) is int, sel
        assert 0 <= sel.start <= sel.stop <= n, (sel, n)
        assert sel.step >= 1, sel
    else:
        assert isinstance(sel, np.ndarray), type(sel)
        assert sel.dtype == np.int64 and sel.ndim == 1, sel
        assert np.all(np.diff(sel) > 0), f"not sorted unique: {sel}"
        assert len(sel) == 0 or (sel[0] >= 0 and sel[-1] < n), (sel, n)


class FakeReader:
    """Reader over a materialised matrix that records calls and checks the Reader contract."""

    def __init__(self, full: np.ndarray) -> None:
        self.full = full
        self.outer_calls: list[tuple[AxisSel, AxisSel]] = []
        self.point_calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.cells_read = 0

    @property
    def called(self) -> bool:
        return bool(self.outer_calls or self.point_calls)

    def read_outer(self, rows: AxisSel, cols: AxisSel) -> np.ndarray:
        _check_sel(rows, self.full.shape[0])
        _check_sel(cols, self.full.shape[1])
        self.outer_calls.append((rows, cols))
        out = self.full[rows][:, cols].copy()
        assert out.shape == (axis_len(rows), axis_len(cols))
        self.cells_read += out.size
        return out

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        for idx, n in ((rows, self.full.shape[0]), (cols, self.full.shape[1])):
            assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1
            assert len(idx) == 0 or (idx.min() >= 0 and idx.max() < n)
        assert rows.shape == cols.shape
        self.point_calls.append((rows, cols))
        self.cells_read += len(rows)
        return self.full[rows, cols]


def _assert_same(got: object, expected: object) -> None:
    if isinstance(expected, np.generic):
        assert isinstance(got, np.generic) and type(got) is type(expected), (got, expected)
        assert got == expected
    else:
        assert isinstance(expected, np.ndarray)
        assert isinstance(got, np.ndarray), type(got)
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def _check_getitem(full: np.ndarray, key: Any) -> FakeReader:
    """Assert getitem(key) behaves exactly like full[key]; return the reader used."""
    reader = FakeReader(full)
    try:
        expected = full[key]
    except Exception as exc:
        with pytest.raises(type(exc)):
            getitem(full.shape, full.dtype, key, reader)
        assert not reader.called, "a bad key must read nothing"
        return reader
    got = getitem(full.shape, full.dtype, key, reader)
    _assert_same(got, expected)
    assert len(reader.outer_calls) + len(reader.point_calls) <= 1
    assert reader.cells_read <= max(np.size(expected), 1), "read more than the result holds"
    return reader


@settings(max_examples=250, deadline=None)
@given(index_case())
def test_getitem_matches_numpy(case: tuple[np.ndarray, Any]) -> None:
    full, key = case
    _check_getitem(full, key)


@settings(max_examples=300, deadline=None)
@given(structured_case())
def test_getitem_matches_numpy_structured(case: tuple[np.ndarray, Any]) -> None:
    full, key = case
    _check_getitem(full, key)


# ----------------------------------------------------------------------------------------------
# Hand-picked keys
# ----------------------------------------------------------------------------------------------

_F = numbered_matrix(5, 7)


def _ids(cases: list[Any]) -> list[str]:
    return [f"{i}-{' '.join(repr(c).split())[:40]}" for i, c in enumerate(cases)]


TRICKY_KEYS: list[Any] = [
    0,
    -1,
    (1, 2),
    (-5, -7),
    (np.int64(2), np.uint8(3)),
    (np.array(1), np.array(2)),
    (np.array(1), 2, ...),
    (1, ..., None),
    ...,
    (..., 3),
    (None, ..., None),
    slice(None, None, -1),
    (slice(4, None, -2), slice(None, 2, -3)),
    (slice(-100, 100, 3), slice(6, -100, -1)),
    [0, 1],
    [[0, 1], [4, 4]],
    ([0, 1], None, [1, 2]),
    ([0, 1], ..., [1, 2]),
    ([0, 1], True, [1, 2]),
    (True, [0, 1], [1, 2]),
    (slice(None), [[0], [1]]),
    (0, [1, 2]),
    ([[0]], 0),
    (None, [[0]], 0),
    ([[0]], None, 0),
    ([3, -1, 3, 0], slice(None, None, -2)),
    (slice(1, 4), [[6, 0], [-1, 6]]),
    _F > 10,
    (_F > 10, None),
    (None, _F > 10),
    (_F > 10, True),
    (np.array([True, False, True, False, True]),),
    (np.array([True, False, True, False, True]), [0, 6, 6]),
    (np.array([True, False, True, False, True]), np.arange(7) % 2 == 0),
    ([[0], [2], [4]], np.arange(7) % 2 == 0),
    (slice(None), np.arange(7) % 3 == 0),
    (True,),
    (np.True_, 1, 2),
    (False, 1),
    ([], slice(None)),
    (slice(None), []),
    ([], []),
    (slice(3, 3), 1),
    (np.array([], dtype=np.int64), np.zeros(0, dtype=bool)),
    (np.array([[1, 2]], dtype=np.uint64), np.array([[0], [3]], dtype=np.int8)),
]


@pytest.mark.parametrize("key", TRICKY_KEYS, ids=_ids(TRICKY_KEYS))
def test_tricky_keys(key: Any) -> None:
    _check_getitem(_F, key)


BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (5, IndexError),
    (-6, IndexError),
    ((0, 7), IndexError),
    ((0, -8), IndexError),
    ((0, 0, 0), IndexError),
    ((..., ...), IndexError),
    ((None, 0, 0, 0), IndexError),
    (1.0, IndexError),
    ((0, 1.5), IndexError),
    ("a", IndexError),
    ([0, 5], IndexError),
    (([0, 1], [1, 2, 3]), IndexError),
    (np.ones(4, dtype=bool), IndexError),
    (np.ones((5, 6), dtype=bool), IndexError),
    ((slice(None), np.ones(8, dtype=bool)), IndexError),
    (np.array([0.5]), IndexError),
    ((slice(None, None, 0),), ValueError),
    (slice(0.5, 2), TypeError),
    ([[0, 1], [2]], ValueError if np.lib.NumpyVersion(np.__version__) >= "1.24.0" else IndexError),
    (object(), IndexError),
]


@pytest.mark.parametrize(("key", "exc"), BAD_KEYS, ids=_ids(BAD_KEYS))
def test_bad_keys_raise_like_numpy(key: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        _F[key]
    reader = FakeReader(_F)
    with pytest.raises(exc):
        getitem(_F.shape, _F.dtype, key, reader)
    assert not reader.called


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_ints_give_numpy_scalar(dtype: Any) -> None:
    full = numbered_matrix(4, 3, dtype)
    for key in [(1, 2), (-1, -1), (np.int32(0), np.array(2))]:
        got = getitem(full.shape, np.dtype(dtype), key, FakeReader(full))
        assert isinstance(got, np.generic) and not isinstance(got, np.ndarray)
        assert type(got) is dtype
        assert got == full[key]


def test_pointwise_reads_only_points() -> None:
    full = numbered_matrix(40, 40)
    for key in [
        ([0, 39, 17], [39, 0, 17]),
        ([[0], [39]], [0, 39]),
        (full % 13 == 0,),
        (np.arange(40) % 7 == 0, np.arange(40) % 7 == 1),
        ([0, 39], None, [[39], [0]]),
    ]:
        reader = _check_getitem(full, key)
        assert not reader.outer_calls
        assert len(reader.point_calls) == 1
        assert len(reader.point_calls[0][0]) == np.size(full[key])


def test_outer_reads_regular_selections_as_slices() -> None:
    full = numbered_matrix(30, 30)
    reader = _check_getitem(full, ([9, 3, 6, 3], slice(None, None, -4)))
    ((rows, cols),) = reader.outer_calls
    assert rows == slice(3, 10, 3)
    assert cols == slice(1, 30, 4)
    reader = _check_getitem(full, ([1, 2, 7], 5))
    ((rows, cols),) = reader.outer_calls
    np.testing.assert_array_equal(rows, [1, 2, 7])
    assert cols == slice(5, 6, 1)


class _HugeReader:
    """Reader of a huge virtual array whose value at (i, j) is i + j / 1e7."""

    def __init__(self) -> None:
        self.calls: list[tuple[AxisSel, AxisSel]] = []

    def read_outer(self, rows: AxisSel, cols: AxisSel) -> np.ndarray:
        self.calls.append((rows, cols))
        r = np.arange(rows.start, rows.stop, rows.step) if isinstance(rows, slice) else rows
        c = np.arange(cols.start, cols.stop, cols.step) if isinstance(cols, slice) else cols
        return r[:, None] + c[None, :] / 1e7

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise AssertionError("not expected")


def test_single_element_of_huge_array_is_cheap() -> None:
    shape = (100_000, 1_000_000)
    reader = _HugeReader()
    x = getitem(shape, np.dtype(np.float64), (5, -3), reader)
    assert reader.calls == [(slice(5, 6, 1), slice(999_997, 999_998, 1))]
    assert isinstance(x, np.float64) and x == 5 + 999_997 / 1e7
    row = getitem(shape, np.dtype(np.float64), (-1, slice(10, 13)), reader)
    assert reader.calls[-1] == (slice(99_999, 100_000, 1), slice(10, 13, 1))
    assert isinstance(row, np.ndarray) and row.shape == (3,)
    # the work done does not grow with the shape: one 1 x 1 read, and no allocation near the
    # size of an axis (an index array over the 100,000 rows alone would take 800 kB)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        getitem(shape, np.dtype(np.float64), (12_345, 678_901), reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.calls[-1] == (slice(12_345, 12_346, 1), slice(678_901, 678_902, 1))
    assert len(reader.calls) == 3  # one read per getitem
    assert peak < 64 * 1024, f"{peak} bytes allocated for one element"


def test_axis_len() -> None:
    assert axis_len(slice(0, 10, 3)) == 4
    assert axis_len(slice(5, 5, 1)) == 0
    assert axis_len(np.array([1, 4, 9], dtype=np.int64)) == 3


# ----------------------------------------------------------------------------------------------
# oindex
# ----------------------------------------------------------------------------------------------


def _oindex_expected(full: np.ndarray, key: tuple[Any, ...]) -> Any:
    idx = []
    for item, n in zip(key, full.shape, strict=True):
        if isinstance(item, int):
            idx.append(np.array([item % n]))
        elif isinstance(item, slice):
            idx.append(np.arange(n)[item])
        else:
            arr = np.asarray(item)
            idx.append(np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64) % n)
    out = full[np.ix_(*idx)]
    if isinstance(key[1], int):
        out = out[:, 0]
    if isinstance(key[0], int):
        out = out[0]
    return out


@st.composite
def _oindex_item(draw: st.DrawFn, n: int) -> Any:
    kinds = ["slice", "array", "list", "mask"] + (["int"] if n else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return draw(st.integers(-n, n - 1))
    if kind == "slice":
        b = st.none() | st.integers(-n - 3, n + 3)
        return slice(draw(b), draw(b), draw(st.none() | st.integers(-5, 5).filter(bool)))
    if kind == "mask":
        return draw(hnp.arrays(np.bool_, (n,)))
    values = draw(st.lists(st.integers(-n, n - 1), max_size=8)) if n else []
    return values if kind == "list" else np.array(values, dtype=np.int64)


@st.composite
def _oindex_case(draw: st.DrawFn) -> tuple[np.ndarray, tuple[Any, ...]]:
    n0, n1 = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    full = numbered_matrix(n0, n1, draw(st.sampled_from([np.float32, np.float64])))
    return full, (draw(_oindex_item(n0)), draw(_oindex_item(n1)))


@settings(max_examples=200, deadline=None)
@given(_oindex_case())
def test_oindex_matches_ix(case: tuple[np.ndarray, tuple[Any, ...]]) -> None:
    full, key = case
    reader = FakeReader(full)
    got = get_oindex(full.shape, full.dtype, key, reader)
    expected = _oindex_expected(full, key)
    _assert_same(got, expected)
    assert len(reader.outer_calls) <= 1
    assert reader.cells_read <= max(np.size(expected), 1)


def test_oindex_short_keys_and_ellipsis() -> None:
    full = numbered_matrix(5, 6)
    cases: list[tuple[Any, Any]] = [
        (2, full[2]),
        ([3, 0], full[[3, 0]]),
        ((slice(None, None, -1),), full[::-1]),
        ((..., 1), full[:, 1]),
        ((1, ...), full[1]),
        ((1, 2, ...), full[1, 2]),
        ((...,), full),
    ]
    for key, expected in cases:
        _assert_same(get_oindex(full.shape, full.dtype, key, FakeReader(full)), expected)


BAD_OINDEX_KEYS: list[tuple[Any, type[Exception]]] = [
    ((5,), IndexError),
    ((-6,), IndexError),
    ((0, 6), IndexError),
    ((0, -7), IndexError),
    (([5],), IndexError),
    (([0, -6],), IndexError),
    (([[0]],), IndexError),
    ((np.array(2),), IndexError),
    ((np.ones(4, dtype=bool),), IndexError),
    ((np.ones(6, dtype=bool),), IndexError),
    ((np.ones((5, 6), dtype=bool),), IndexError),
    ((0, 0, 0), IndexError),
    ((..., ...), IndexError),
    ((1.5,), IndexError),
    ((None,), IndexError),
    ("a", IndexError),
    ((True,), IndexError),
    (([1.0],), IndexError),
    ((slice(None, None, 0),), ValueError),
    ((slice(0.5, 2),), TypeError),
]


@pytest.mark.parametrize(("key", "exc"), BAD_OINDEX_KEYS, ids=_ids(BAD_OINDEX_KEYS))
def test_bad_oindex_keys(key: Any, exc: type[Exception]) -> None:
    full = numbered_matrix(5, 6)
    reader = FakeReader(full)
    with pytest.raises(exc):
        get_oindex(full.shape, full.dtype, key, reader)
    assert not reader.called
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=(5, 6), dtype="f4")
    with pytest.raises(exc):
        z.oindex[key]
