"""Property: ``arr[key] == full[key]`` on a real store, whatever the block shape.

Keys come from the same strategies as the indexing unit tests (every kind numpy accepts, and
bad ones). A key numpy rejects must raise the same exception type and compute nothing; a valid
key computes only blocks it touches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from helpers import CountingFn
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import index_item, structured_case

import infl_array as ia

_block_len = st.sampled_from([1, 2, 3, 5, 7, 11, 13, 64])


@st.composite
def _array_case(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int], Any]:
    if draw(st.booleans()):
        full, key = draw(structured_case().filter(lambda case: 0 not in case[0].shape))
    else:
        n0, n1 = draw(st.integers(1, 25)), draw(st.integers(1, 25))
        full = np.arange(n0 * n1, dtype=np.float32).reshape(n0, n1) - 7.5
        key = draw(st.lists(index_item(n0, n1), max_size=3).map(tuple))
    block_shape = (draw(_block_len), draw(_block_len))
    return full, block_shape, key


def _touched(full: np.ndarray, key: Any, block_shape: tuple[int, int]) -> set[tuple[int, int]]:
    """Blocks holding at least one element of ``full[key]`` (via index proxies)."""
    rows = np.broadcast_to(np.arange(full.shape[0])[:, None], full.shape)[key]
    cols = np.broadcast_to(np.arange(full.shape[1])[None, :], full.shape)[key]
    rows, cols = np.ravel(rows), np.ravel(cols)
    return set(
        zip((rows // block_shape[0]).tolist(), (cols // block_shape[1]).tolist(), strict=True)
    )


@settings(max_examples=200, deadline=None)
@given(_array_case())
def test_getitem_matches_numpy_on_a_store(case: tuple[np.ndarray, tuple[int, int], Any]) -> None:
    full, block_shape, key = case
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(
        {}, fn, shape=full.shape, block_shape=block_shape, dtype=full.dtype.name
    )
    try:
        expected = full[key]
    except Exception as exc:
        try:
            arr[key]
        except Exception as got:
            assert type(got) is type(exc), (got, exc)
        else:
            raise AssertionError(f"numpy raised {exc!r}, infl_array did not")
        assert fn.calls == []
        return
    got = arr[key]
    assert type(got) is type(expected)
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)
    computed = {(r0 // block_shape[0], c0 // block_shape[1]) for r0, _, c0, _ in fn.calls}
    assert len(computed) == len(fn.calls), "a block was computed twice"
    assert computed == _touched(full, key, block_shape)
    fn.calls.clear()
    np.testing.assert_array_equal(arr[key], expected)
    assert fn.calls == [], "a repeated read computed again"
