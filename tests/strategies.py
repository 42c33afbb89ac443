"""Hypothesis strategies for numpy keys on 2-D arrays (shared by the indexing tests)."""

from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st


def numbered_matrix(n0: int, n1: int, dtype: Any = np.float32) -> np.ndarray:
    """A matrix whose every value is distinct."""
    return np.arange(n0 * n1, dtype=dtype).reshape(n0, n1)


@st.composite
def _int_item(draw: st.DrawFn, m: int) -> Any:
    i = draw(st.integers(-m - 2, m + 1))
    wrap = draw(st.sampled_from(["int", "int", "np", "0d"]))
    return {"int": i, "np": np.int64(i), "0d": np.array(i)}[wrap]


_bound = st.none() | st.integers(-50, 50)


@st.composite
def _slice_item(draw: st.DrawFn, m: int) -> slice:
    b = st.none() | st.integers(-m - 3, m + 3)
    step = draw(st.none() | st.integers(-4, 4).filter(bool) | st.just(0) | st.integers(-60, 60))
    if step == 0 and draw(st.integers(0, 9)):  # keep the ValueError case rare
        step = 1
    return slice(draw(b), draw(b), step)


@st.composite
def _int_array_item(draw: st.DrawFn, m: int) -> Any:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    hi = m if draw(st.integers(0, 19)) else m + 2  # out of bounds sometimes
    arr = draw(hnp.arrays(np.int64, shape, elements=st.integers(-m, max(hi - 1, 0))))
    kind = draw(st.sampled_from(["array", "list", "int32"]))
    if kind == "list":
        return arr.tolist()
    return arr.astype(np.int32) if kind == "int32" else arr


@st.composite
def _mask_item(draw: st.DrawFn, n0: int, n1: int) -> Any:
    choice = draw(st.sampled_from(["n0", "n1", "2d", "rand", "list"]))
    if choice == "2d":
        shape: tuple[int, ...] = (n0, n1)
    elif choice == "rand":
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5))
    else:
        shape = (n0,) if choice in ("n0", "list") else (n1,)
    mask = draw(hnp.arrays(np.bool_, shape))
    return mask.tolist() if choice == "list" else mask


_bool_scalar = st.sampled_from([True, False, np.True_, np.False_, np.array(True), np.array(False)])
_bad_item = st.sampled_from([1.0, "a", np.float64(1.0), [1.5], np.array([0.5]), (0, 1)])


@st.composite
def index_item(draw: st.DrawFn, n0: int, n1: int) -> Any:
    m = max(n0, n1)
    return draw(
        st.one_of(
            _int_item(m),
            _slice_item(m),
            _slice_item(m),
            _int_array_item(m),
            _int_array_item(m),
            _mask_item(n0, n1),
            st.none(),
            st.just(Ellipsis),
            _bool_scalar,
            _bad_item,
        )
    )


@st.composite
def index_case(draw: st.DrawFn) -> tuple[np.ndarray, Any]:
    small = st.integers(1, 6)
    n0 = draw(small | st.integers(0, 40))
    n1 = draw(small | st.integers(0, 40))
    full = numbered_matrix(n0, n1, draw(st.sampled_from([np.float32, np.float64])))
    items = draw(st.lists(index_item(n0, n1), min_size=0, max_size=4))
    key = items[0] if len(items) == 1 and draw(st.booleans()) else tuple(items)
    return full, key


@st.composite
def _axis_item(draw: st.DrawFn, n: int, base: tuple[int, ...]) -> Any:
    """A valid-ish item for an axis of length ``n``; index arrays have shapes related to
    ``base`` so that two of them often broadcast."""
    kinds = ["slice", "array", "array", "mask"] + (["int"] if n else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        i = draw(st.integers(-n, n - 1))
        return draw(st.sampled_from([i, np.int32(i), np.array(i)]))
    if kind == "slice":
        return draw(_slice_item(n))
    if kind == "mask":
        return draw(hnp.arrays(np.bool_, (n,)))
    shape = draw(st.sampled_from([base, base, base[-1:], (1,) * len(base), (len(base) and 1,)]))
    if n == 0:
        shape = (0,)
    arr = draw(hnp.arrays(np.int64, shape, elements=st.integers(-n, max(n - 1, 0))))
    return arr.tolist() if draw(st.booleans()) else arr


@st.composite
def structured_case(draw: st.DrawFn) -> tuple[np.ndarray, Any]:
    """Mostly valid keys: one item per axis (or a 2-D mask), plus None, bools and ``...``."""
    n0, n1 = (
        draw(st.integers(0, 40) | st.integers(1, 5)),
        draw(st.integers(0, 40) | st.integers(1, 5)),
    )
    full = numbered_matrix(n0, n1, draw(st.sampled_from([np.float32, np.float64])))
    base = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    if draw(st.integers(0, 5)) == 0:
        items: list[Any] = [draw(hnp.arrays(np.bool_, (n0, n1)))]
    else:
        items = [draw(_axis_item(n0, base)), draw(_axis_item(n1, base))]
        items = items[: draw(st.sampled_from([0, 1, 2, 2, 2]))]
        if items and draw(st.booleans()):
            items[draw(st.integers(0, len(items) - 1))] = Ellipsis
    extras = draw(st.lists(st.none() | _bool_scalar | st.just(Ellipsis), max_size=2))
    for extra in extras:
        if extra is not Ellipsis or not any(item is Ellipsis for item in items):
            items.insert(draw(st.integers(0, len(items))), extra)
    key = items[0] if len(items) == 1 and draw(st.booleans()) else tuple(items)
    return full, key
