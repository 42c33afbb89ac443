"""Numpy-exact indexing of a lazily read 2-D array.

An array of shape ``(n0, n1)`` is never materialised; its values come from a :class:`Reader`,
which reads either an outer product of row and column selections (``read_outer``) or a list of
single points (``read_points``). :func:`getitem` gives exactly what ``full[key]`` gives on the
materialised matrix ``full``; :func:`get_oindex` gives zarr-style outer (orthogonal) selection.

Algorithm of :func:`getitem`
----------------------------
1. **Validate with numpy.** ``key`` is applied to a zero-strided boolean proxy of the array's
   shape (``np.broadcast_to``). This raises numpy's own exception for every bad key, before
   anything is read, and gives the result shape. An empty result is returned without reading.
2. **Normalise.** Each key element is read as numpy reads it: ``None``, ``...``, a slice, a bool
   scalar (0-d bool array, consumes no axis), an integer (also numpy integers and 0-d integer
   arrays), an integer array, or a boolean array (a k-d mask consumes k axes). ``...`` consumes
   the axes the other elements leave over; axes left at the end are full slices.
3. **Per axis**, the sorted, unique indices the element needs (an :data:`AxisSel`) and a
   *remapped* key element that selects the same thing from the sub-array holding just those
   indices: int ``i`` -> ``0``; slice -> ``slice(None)`` (or ``slice(None, None, -1)`` for a
   negative step); int array -> ``np.searchsorted(unique, normalised)``; 1-D mask -> an all-true
   mask of its count. ``None``, ``...`` and bool scalars are kept, so the remapped key has the
   same structure and numpy's own rules decide broadcasting and placement of advanced indices.
4. **Outer case** (at least one axis not taken by an index array of ndim >= 1): read
   ``sub = reader.read_outer(rows, cols)`` once and return ``sub[remapped_key]``.
5. **Pointwise case** (both axes taken by index arrays, or by one 2-D mask): only the selected
   points are read. The row (column) of every result element is found by applying the remapped
   key to a zero-strided proxy whose values are the needed row (column) numbers, and
   ``reader.read_points`` reads them.

Integers and slices cost O(1); index arrays cost O(size log size); nothing is O(n0) or O(n1)
unless the key itself is (a boolean mask).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from infl_array.engine.plan import AxisSel
from infl_array.errors import format_bytes

__all__ = ["AxisSel", "Reader", "axis_len", "get_oindex", "getitem"]


class Reader(Protocol):
    """Source of the values of a 2-D array ``full`` of shape ``(n0, n1)``.

    The indexing functions call a reader only with valid, normalised selections:
    slices are positive-step and in bounds, index arrays are 1-D int64 and in bounds.
    """

    def read_outer(self, rows: AxisSel, cols: AxisSel) -> np.ndarray:
        """Read the outer product of a row and a column selection.

        Parameters
        ----------
        rows, cols : AxisSel
            Normalised selections of axis 0 and axis 1 (sorted, unique, in bounds).

        Returns
        -------
        numpy.ndarray
            A NEW array equal to ``full[rows][:, cols]``, of shape
            ``(axis_len(rows), axis_len(cols))`` and the array's dtype. The caller owns it and
            may modify it.
        """
        ...

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Read single points.

        Parameters
        ----------
        rows, cols : numpy.ndarray
            1-D int64 arrays of equal length, in bounds, in any order, duplicates allowed.

        Returns
        -------
        numpy.ndarray
            The 1-D array ``full[rows, cols]`` of the array's dtype (a new array).
        """
        ...


def axis_len(sel: AxisSel) -> int:
    """Return the number of indices in a normalised selection.

    Parameters
    ----------
    sel : AxisSel
        A normalised slice or a 1-D index array.

    Returns
    -------
    int
        ``len(range(sel.start, sel.stop, sel.step))`` for a slice, ``len(sel)`` for an array.
    """
    if isinstance(sel, slice):
        return len(range(sel.start, sel.stop, sel.step))
    return len(sel)


@dataclass(frozen=True)
class _Axis:
    """What one key element needs along one axis.

    Attributes
    ----------
    sel : AxisSel
        Sorted unique indices needed (a slice, or a 1-D int64 array).
    key : object
        Key element selecting the original element's result from the sub-array ``full[sel]``.
    """

    sel: AxisSel
    key: Any


def _compact(sel: AxisSel) -> AxisSel:
    """Turn a sorted unique index array that is a regular progression into a slice."""
    if isinstance(sel, slice) or len(sel) == 0:
        return sel
    first = int(sel[0])
    if len(sel) == 1:
        return slice(first, first + 1, 1)
    step = int(sel[1]) - first
    if np.all(np.diff(sel) == step):
        return slice(first, int(sel[-1]) + 1, step)
    return sel


def _as_array(sel: AxisSel) -> np.ndarray:
    """Return a normalised selection as a 1-D int64 index array."""
    if isinstance(sel, slice):
        return np.arange(sel.start, sel.stop, sel.step, dtype=np.int64)
    return sel


def _slice_axis(s: slice, n: int) -> _Axis:
    """Normalise a slice of any step to a positive-step, tight, in-bounds slice."""
    start, stop, step = s.indices(n)
    r = range(start, stop, step)
    if len(r) == 0:
        return _Axis(slice(0, 0, 1), slice(None))
    lo, hi = min(r[0], r[-1]), max(r[0], r[-1])
    sel = slice(lo, hi + 1, abs(step) if len(r) > 1 else 1)
    return _Axis(sel, slice(None) if step > 0 else slice(None, None, -1))


def _int_array_axis(arr: np.ndarray, n: int) -> _Axis:
    """Normalise an in-bounds integer index array of any shape."""
    idx = arr.astype(np.int64)
    idx = np.where(idx < 0, idx + n, idx)
    uniq = np.unique(idx)
    return _Axis(uniq, np.searchsorted(uniq, idx))


def _mask_axis(mask: np.ndarray) -> _Axis:
    """Normalise a 1-D boolean mask."""
    idx = np.flatnonzero(mask).astype(np.int64)
    return _Axis(idx, np.ones(len(idx), dtype=bool))


def _read_as_numpy(obj: object) -> object:
    """Return a key element as numpy reads it.

    ``None``, ``Ellipsis`` and slices are returned unchanged, bool scalars become 0-d bool
    arrays, integers (anything with ``__index__`` that is not an array or a bool) become
    ``int``, everything else becomes an array (empty ones of integer type, like numpy).
    """
    if obj is None or obj is Ellipsis or isinstance(obj, slice | np.ndarray):
        return obj
    if isinstance(obj, bool | np.bool_):
        return np.asarray(obj)
    try:
        return operator.index(obj)  # type: ignore[arg-type]
    except TypeError:
        pass
    arr = np.asarray(obj)
    return arr.astype(np.intp) if arr.size == 0 else arr


def _consumed(elem: object) -> int:
    """Number of array axes a normalised key element consumes (``...`` counts as 0)."""
    if elem is None or elem is Ellipsis:
        return 0
    if isinstance(elem, np.ndarray) and elem.dtype == bool:
        return elem.ndim
    return 1


def _check_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Return ``values`` in ``dtype`` (a no-op for a reader that keeps its contract)."""
    return values if values.dtype == dtype else values.astype(dtype)


def check_result_size(
    out_shape: tuple[int, ...] | int, dtype: np.dtype, max_bytes: int | None
) -> None:
    """``MemoryError`` when a result (a shape, or a number of values) would exceed ``max_bytes``.

    Examples
    --------
    >>> check_result_size((3, 4), np.dtype("float32"), 1 << 20)
    >>> check_result_size(10**6, np.dtype("float32"), 1 << 20)
    Traceback (most recent call last):
    ...
    MemoryError: refusing to read a result of 1,000,000 values (3.8 MiB), more than ...
    """
    if max_bytes is None:
        return
    size = out_shape if isinstance(out_shape, int) else math.prod(out_shape)
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > max_bytes:
        what = f"shape {out_shape}" if isinstance(out_shape, tuple) else f"{size:,} values"
        raise MemoryError(
            f"refusing to read a result of {what} ({format_bytes(nbytes)}), more than "
            f"materialize_limit_bytes ({format_bytes(max_bytes)}), so it could never be "
            "returned; nothing was computed. Read a smaller slice, stream with arr.top_k(...), "
            "the reductions (np.sum(arr, axis=...)) or arr.fill(), use arr.to_dask(), or raise "
            "arr.materialize_limit_bytes on purpose."
        )


def _has_arrays(key: object) -> bool:
    return any(
        isinstance(e, list | np.ndarray) for e in (key if isinstance(key, tuple) else (key,))
    )


def result_size(key: object, n: tuple[int, int]) -> int | None:
    """The number of elements ``full[key]`` has, without building it (None if unsure).

    Validating a key on numpy's zero-strided proxy costs time and memory proportional to the
    result when the key holds index arrays, so a huge read is sized from the key first:
    slices and remaining axes contribute their lengths, index arrays and masks the broadcast
    of their shapes. Keys it cannot read are left to numpy's validation.

    Examples
    --------
    >>> result_size((np.arange(3)[:, None], slice(None, None, 2)), (10, 9))
    15
    >>> result_size((None, np.ones(4, bool)), (4, 10))
    40
    """
    try:
        elems = [_read_as_numpy(e) for e in (key if isinstance(key, tuple) else (key,))]
        free = 2 - sum(_consumed(e) for e in elems)
        lengths: list[int] = []
        advanced: list[tuple[int, ...]] = []
        axis = 0
        for e in elems:
            if e is Ellipsis:
                lengths += list(n[axis : axis + free])
                axis += free
            elif isinstance(e, slice):
                lengths.append(len(range(*e.indices(n[axis]))))
                axis += 1
            elif isinstance(e, int):
                axis += 1
            elif isinstance(e, np.ndarray) and e.dtype == bool:
                advanced.append((int(np.count_nonzero(e)),) if e.ndim else (int(e),))
                axis += e.ndim
            elif isinstance(e, np.ndarray):
                advanced.append(e.shape)
                axis += 1
        lengths += list(n[axis:])
        return math.prod(lengths) * math.prod(np.broadcast_shapes(*advanced))
    except Exception:
        return None


def getitem(
    shape: tuple[int, int],
    dtype: np.dtype,
    key: object,
    reader: Reader,
    max_bytes: int | None = None,
) -> np.ndarray | np.generic:
    """Return ``full[key]`` exactly as numpy would, reading only what is needed.

    Parameters
    ----------
    shape : tuple of int
        ``(n0, n1)``, the shape of the array.
    dtype : numpy.dtype
        The array's dtype.
    key : object
        Any key numpy accepts for a 2-D array: ints, slices, ``...``, ``None``, bools,
        integer arrays or lists of any shape, boolean masks, and tuples mixing them.
    reader : Reader
        Source of the values.
    max_bytes : int or None
        Refuse (``MemoryError``, before anything is read) a result larger than this.

    Returns
    -------
    numpy.ndarray or numpy.generic
        A new array equal to ``full[key]`` (same shape, dtype and values); a numpy scalar when
        ``key`` is two integers.

    Raises
    ------
    IndexError, TypeError, ValueError
        Whatever numpy raises for ``full[key]``; nothing is read then.
    MemoryError
        The result would exceed ``max_bytes``; nothing is read then.
    """
    dtype = np.dtype(dtype)
    n = (int(shape[0]), int(shape[1]))
    any_key: Any = key
    if max_bytes is not None and _has_arrays(key):  # numpy's check below costs O(result)
        size = result_size(key, n)
        if size is not None:
            check_result_size(size, dtype, max_bytes)
    probe = np.broadcast_to(np.zeros((), dtype=bool), n)[any_key]  # raises like full[key]
    out_shape = np.shape(probe)
    check_result_size(out_shape, dtype, max_bytes)
    if math.prod(out_shape) == 0:
        return np.empty(out_shape, dtype=dtype)

    axes, rkey, pointwise, mask2d = _normalise(key, n)
    if not pointwise:
        sub = _check_dtype(reader.read_outer(_compact(axes[0].sel), _compact(axes[1].sel)), dtype)
        return sub[rkey]

    return _read_pointwise(axes, rkey, mask2d, n, dtype, reader)


def _read_pointwise(
    axes: list[_Axis],
    rkey: tuple[Any, ...],
    mask2d: bool,
    n: tuple[int, int],
    dtype: np.dtype,
    reader: Reader,
) -> np.ndarray:
    """Step 5 of :func:`getitem` (module docstring): read only the selected points.

    The (row, col) of every result element is found on zero-strided proxies whose values are
    the row (column) numbers, indexed with the remapped key.
    """
    if mask2d:  # the key holds the mask itself; it indexes the full shape
        rows_v, cols_v = np.arange(n[0], dtype=np.int64), np.arange(n[1], dtype=np.int64)
    else:
        rows_v, cols_v = _as_array(axes[0].sel), _as_array(axes[1].sel)
    proxy_shape = (len(rows_v), len(cols_v))
    rows = np.broadcast_to(rows_v[:, None], proxy_shape)[rkey]
    cols = np.broadcast_to(cols_v[None, :], proxy_shape)[rkey]
    values = reader.read_points(rows.ravel(), cols.ravel())
    return _check_dtype(values, dtype).reshape(rows.shape)


def _normalise(key: object, n: tuple[int, int]) -> tuple[list[_Axis], tuple[Any, ...], bool, bool]:
    """Split a key numpy accepted into per-axis needs and a remapped key.

    Parameters
    ----------
    key : object
        A key that ``full[key]`` accepts (already validated).
    n : tuple of int
        The array's shape.

    Returns
    -------
    axes : list of _Axis
        For axes 0 and 1, the needed indices and the remapped key element.
    rkey : tuple
        The remapped key, element for element like ``key`` (``None``, ``...`` and bool scalars
        kept, a 2-D mask kept as it is).
    pointwise : bool
        Whether both axes are taken by index arrays of ndim >= 1 (or one 2-D mask).
    mask2d : bool
        Whether the key holds a 2-D boolean mask.
    """
    orig = key if isinstance(key, tuple) else (key,)
    elems = [_read_as_numpy(e) for e in orig]
    ellipsis_len = 2 - sum(_consumed(e) for e in elems)
    axes = [_Axis(slice(0, n[0], 1), slice(None)), _Axis(slice(0, n[1], 1), slice(None))]
    rkey: list[Any] = []
    array_axes = 0  # axes taken by index arrays of ndim >= 1
    mask2d = False
    ax = 0
    for o, e in zip(orig, elems, strict=True):
        if e is Ellipsis:
            rkey.append(o)
            ax += ellipsis_len
        elif e is None or (isinstance(e, np.ndarray) and e.dtype == bool and e.ndim == 0):
            rkey.append(o)  # None or a bool scalar: consumes no axis
        elif isinstance(e, slice):
            axes[ax] = _slice_axis(e, n[ax])
            rkey.append(axes[ax].key)
            ax += 1
        elif isinstance(e, int) or (isinstance(e, np.ndarray) and e.ndim == 0):
            i = operator.index(e)
            i = i + n[ax] if i < 0 else i
            zero = np.zeros((), dtype=np.intp) if isinstance(e, np.ndarray) else 0
            axes[ax] = _Axis(slice(i, i + 1, 1), zero)
            rkey.append(zero)
            ax += 1
        elif isinstance(e, np.ndarray) and e.dtype == bool and e.ndim == 2:
            rkey.append(e)
            mask2d = True
            array_axes += 2
            ax += 2
        else:
            assert isinstance(e, np.ndarray)
            axes[ax] = _mask_axis(e) if e.dtype == bool else _int_array_axis(e, n[ax])
            rkey.append(axes[ax].key)
            array_axes += 1
            ax += 1
    return axes, tuple(rkey), array_axes == 2, mask2d


def _oindex_axis(item: Any, n: int) -> tuple[_Axis, int | None]:
    """Validate and normalise one per-axis item of an orthogonal selection.

    Returns the axis (needed indices and the key into the sub-array) and the axis's length in
    the result, or ``None`` for an integer (the axis is dropped).
    """
    if isinstance(item, slice):
        axis = _slice_axis(item, n)
        return axis, axis_len(axis.sel)
    if isinstance(item, list) and len(item) == 0:
        item = np.zeros(0, dtype=np.int64)
    elif isinstance(item, list):
        item = np.asarray(item)
    if not isinstance(item, np.ndarray):
        if isinstance(item, bool | np.bool_):
            raise IndexError(f"unsupported selection item for orthogonal indexing: {item!r}")
        try:
            i = operator.index(item)
        except TypeError:
            raise IndexError(
                "unsupported selection item for orthogonal indexing; expected an integer, a "
                f"slice, a 1-D integer array or a 1-D boolean array, got {item!r}"
            ) from None
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for an axis of length {n}")
        i = i + n if i < 0 else i
        return _Axis(slice(i, i + 1, 1), 0), None
    if item.dtype == bool:
        if item.ndim != 1:
            raise IndexError("boolean arrays in an orthogonal selection must be 1-dimensional")
        if len(item) != n:
            raise IndexError(f"boolean array has length {len(item)}; expected {n}")
        idx = np.flatnonzero(item).astype(np.int64)
        return _Axis(idx, slice(None)), len(idx)
    if item.dtype.kind not in "iu":
        raise IndexError(f"arrays in an orthogonal selection must be integer or boolean: {item!r}")
    if item.ndim != 1:
        raise IndexError("integer arrays in an orthogonal selection must be 1-dimensional")
    if len(item) and not (-n <= item.min() and item.max() < n):
        raise IndexError(f"an index is out of bounds for an axis of length {n}")
    axis = _int_array_axis(item, n)
    if axis_len(axis.sel) == len(item) and np.array_equal(axis.key, np.arange(len(item))):
        axis = _Axis(axis.sel, slice(None))  # already sorted and unique
    return axis, len(item)


def _oindex_items(key: object) -> tuple[Any, Any]:
    """The two per-axis items of an orthogonal selection, ``...`` and missing axes filled."""
    items = key if isinstance(key, tuple) else (key,)
    n_ellipsis = sum(item is Ellipsis for item in items)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if len(items) - n_ellipsis > 2:
        raise IndexError(f"too many indices for array; expected 2, got {len(items) - n_ellipsis}")
    if n_ellipsis:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        fill = (slice(None),) * (3 - len(items))
        items = items[:at] + fill + items[at + 1 :]
    items = items + (slice(None),) * (2 - len(items))
    return items[0], items[1]


def get_oindex(
    shape: tuple[int, int],
    dtype: np.dtype,
    key: object,
    reader: Reader,
    max_bytes: int | None = None,
) -> np.ndarray | np.generic:
    """Return the outer (orthogonal) selection ``key``, as zarr's ``oindex`` does.

    Parameters
    ----------
    shape : tuple of int
        ``(n0, n1)``, the shape of the array.
    dtype : numpy.dtype
        The array's dtype.
    key : object
        A tuple of at most two per-axis items (or one item for axis 0), optionally with one
        ``...``. Per axis: an int (negative counts from the end), a slice (any step, negative
        too), a 1-D int array or list (any order, duplicates and negatives allowed) or a 1-D
        boolean mask of the axis's length.
    reader : Reader
        Source of the values.
    max_bytes : int or None
        Refuse (``MemoryError``, before anything is read) a result larger than this.

    Returns
    -------
    numpy.ndarray or numpy.generic
        ``full[np.ix_(rows, cols)]`` with the axes indexed by an int dropped; a numpy scalar
        when both items are ints.

    Raises
    ------
    IndexError
        Out-of-bounds indices, a mask of the wrong length, a multi-dimensional array, too many
        items, or an unsupported item (float, str, None, bool scalar, ...).
    TypeError, ValueError
        A slice with non-integer bounds, or a zero step.
    """
    dtype = np.dtype(dtype)
    n = (int(shape[0]), int(shape[1]))
    items = _oindex_items(key)
    ax0, len0 = _oindex_axis(items[0], n[0])
    ax1, len1 = _oindex_axis(items[1], n[1])
    out_shape = tuple(size for size in (len0, len1) if size is not None)
    check_result_size(out_shape, dtype, max_bytes)
    if math.prod(out_shape) == 0:
        return np.empty(out_shape, dtype=dtype)
    sub = _check_dtype(reader.read_outer(_compact(ax0.sel), _compact(ax1.sel)), dtype)
    if isinstance(ax0.key, np.ndarray) and isinstance(ax1.key, np.ndarray):
        return sub[np.ix_(ax0.key, ax1.key)]
    return sub[ax0.key, ax1.key]
