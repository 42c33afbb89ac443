"""Shared numerics of :mod:`infl_array.quality`: input checks, row bands, ranks, correlations.

numpy only. ``scores`` arguments are ``(n_test, n_train)`` matrices with ``shape`` and numpy
indexing (an :class:`~infl_array.arrays.influence.InfluenceArray` or a numpy array), read a band of
test rows at a time (:func:`row_bands`, :func:`read_rows`) so an ``InfluenceArray`` is never
materialised whole. Correlations work column by column and give NaN where a column is constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ROWS",
    "defined_mean",
    "float_array",
    "is_ragged",
    "pearson_columns",
    "rank_average",
    "read_rows",
    "row_bands",
    "shape2d",
    "spearman_columns",
    "subset_mask",
]

DEFAULT_ROWS = 256
"""Test rows read from ``scores`` at a time (when it has no ``block_shape``)."""


# ---------------------------------------------------------------------------------- validation
def shape2d(scores: Any) -> tuple[int, int]:
    shape = getattr(scores, "shape", None)
    if shape is None or not hasattr(scores, "__getitem__"):
        raise TypeError(
            f"scores must be an InfluenceArray or a numpy array of shape (n_test, n_train), got "
            f"{type(scores).__name__}; pass np.asarray(your_scores)."
        )
    if len(shape) != 2:
        raise ValueError(
            f"scores must be 2-D (n_test, n_train), got shape {tuple(shape)}; for one test "
            "point pass scores[None, :]."
        )
    n_test, n_train = (int(s) for s in shape)
    if n_test == 0 or n_train == 0:
        raise ValueError(f"scores is empty (shape {(n_test, n_train)}); nothing to score.")
    return n_test, n_train


def float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of real numbers; {exc}") from exc
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); pass finite values.")
    return arr


def row_bands(scores: Any, n_test: int) -> list[slice]:
    block = getattr(scores, "block_shape", None)
    step = int(block[0]) if block is not None else DEFAULT_ROWS
    return [slice(s, min(s + step, n_test)) for s in range(0, n_test, step)]


def read_rows(scores: Any, rows: slice, n_train: int, name: str = "scores") -> np.ndarray:
    band = np.asarray(scores[rows], dtype=np.float64)
    expected = (rows.stop - rows.start, n_train)
    if band.shape != expected:
        raise ValueError(
            f"{name}[{rows.start}:{rows.stop}] has shape {band.shape}, not {expected}."
        )
    if not np.isfinite(band).all():
        raise ValueError(
            f"{name} has non-finite values in test rows {rows.start}:{rows.stop}; "
            "attributions must be finite (check the backend's regularization)."
        )
    return band


def subset_mask(subsets: Any, n_train: int) -> np.ndarray:
    """Subsets of the train set as a boolean mask of shape ``(n_subsets, n_train)``.

    Parameters
    ----------
    subsets : array_like or sequence of array_like
        Either a boolean mask ``(n_subsets, n_train)`` (row ``s``: which train points subset
        ``s`` keeps) or a sequence of integer index arrays (the kept train indices).
    n_train : int
        Number of train points.

    Returns
    -------
    numpy.ndarray
        Boolean, ``(n_subsets, n_train)``.

    Examples
    --------
    >>> subset_mask([[0, 2], [1]], 3).astype(int)
    array([[1, 0, 1],
           [0, 1, 0]])
    """
    arr = np.asarray(subsets, dtype=object) if is_ragged(subsets) else np.asarray(subsets)
    if arr.dtype == bool:
        if arr.ndim != 2 or arr.shape[1] != n_train:
            raise ValueError(
                f"a boolean subsets mask must have shape (n_subsets, n_train={n_train}), got "
                f"{arr.shape}."
            )
        mask = arr.copy()
    else:
        mask = np.zeros((len(subsets), n_train), dtype=bool)
        for s, idx in enumerate(subsets):
            ind = np.asarray(idx)
            if ind.ndim != 1 or (ind.size and not np.issubdtype(ind.dtype, np.integer)):
                raise TypeError(
                    f"subset {s} must be a 1-D array of integer train indices, got dtype "
                    f"{ind.dtype} and shape {ind.shape}; or pass a boolean mask "
                    "(n_subsets, n_train)."
                )
            if ind.size and (ind.min() < -n_train or ind.max() >= n_train):
                raise IndexError(
                    f"subset {s} has train indices outside [0, {n_train}): min {ind.min()}, "
                    f"max {ind.max()}."
                )
            mask[s, ind] = True
    if mask.shape[0] == 0:
        raise ValueError("subsets is empty; pass at least one subset.")
    return mask


def is_ragged(subsets: Any) -> bool:
    if isinstance(subsets, np.ndarray):
        return False
    try:
        lengths = {len(s) for s in subsets}
    except TypeError:
        return False
    return len(lengths) > 1


# ---------------------------------------------------------------------------------- ranks
def rank_average(values: Any, axis: int = 0) -> np.ndarray:
    """Ranks ``1..n`` along ``axis``, ties sharing their average rank.

    The same as :func:`scipy.stats.rankdata` with ``method="average"`` along an axis.

    Parameters
    ----------
    values : array_like
        Real values, 1-D or 2-D.
    axis : int
        The axis ranked.

    Returns
    -------
    numpy.ndarray
        float64 ranks of the same shape.

    Examples
    --------
    >>> rank_average([10.0, 30.0, 20.0, 20.0])
    array([1. , 4. , 2.5, 2.5])
    """
    x = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    n = x.shape[0]
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    pos = np.arange(n, dtype=np.float64).reshape((n,) + (1,) * (x.ndim - 1))
    pos = np.broadcast_to(pos, x.shape)
    starts = np.ones(x.shape, dtype=bool)
    starts[1:] = xs[1:] != xs[:-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0.0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n), 0), axis=0), 0)
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return np.moveaxis(ranks, 0, axis)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column pair of ``a``, ``b`` (``(m, k)``); NaN if constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    num = (a * b).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(out, -1.0, 1.0)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return pearson_columns(rank_average(a, 0), rank_average(b, 0))


def defined_mean(values: np.ndarray, what: str) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(
            f"{what} is undefined for every test point: the predictions or the measured "
            "outputs are constant across the samples; check that the retrained outputs vary."
        )
    return float(finite.mean())
