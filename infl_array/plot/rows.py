"""Reading the few values a picture needs from an array, lazily.

>>> row = np.array([0.5, -2.0, 3.0, 0.5, -2.0])
>>> ranked(row, 2, largest=True).tolist(), ranked(row, 2, largest=False).tolist()
([2, 0], [1, 4])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ranked", "read_row", "chosen_rows"]


def ranked(row: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Indices of the ``k`` largest (or smallest) entries of ``row``, best first, ties by index."""
    cols = np.arange(row.size)
    return np.lexsort((cols, -row if largest else row))[:k]


def read_row(arr: Any, row: int | None) -> np.ndarray:
    """One row of a 2-D array (``arr[row]``: computes only its block row), or a 1-D array."""
    ndim = len(np.shape(arr)) if not hasattr(arr, "ndim") else arr.ndim
    if ndim == 1:
        if row is not None:
            raise ValueError(f"arr is 1-D (one row already); got row={row}. Leave row out.")
        return np.asarray(arr[...], dtype=np.float64)
    if ndim != 2 or row is None:
        raise ValueError(
            f"expected a 2-D influence array and a test row, or a 1-D row of values; got "
            f"{ndim}-D and row={row}. Pass e.g. influence_distribution(arr, 0)."
        )
    n_test = arr.shape[0]
    if not -n_test <= row < n_test:
        raise IndexError(f"row {row} is out of range for {n_test} test points")
    return np.asarray(arr[row], dtype=np.float64)


def chosen_rows(arr: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, values)`` of the chosen test rows: ``arr[indices]`` (their block rows only)."""
    indices = np.atleast_1d(np.asarray(rows, dtype=np.int64)) % arr.shape[0]
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"rows must be a non-empty list of test indices; got {rows!r}")
    return indices, np.asarray(arr[indices], dtype=np.float64)
