"""Checking what a source computed before it may be stored.

A source's ``compute_block(rows: range, cols: range)`` (for a plain block function, the
function itself) returns the influence values of the test
points ``rows`` against the train points ``cols``. Before anything is written its result is
checked: a 2-D array (numpy, torch or anything with ``__array__``) of exactly
``(len(rows), len(cols))``, of a real numeric dtype that casts to the store's dtype, and
finite everywhere. Anything else raises :class:`~infl_array.errors.BlockFunctionError` naming
the block, and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from infl_array.errors import BlockFunctionError, add_note
from infl_array.storage.grid import BlockCoords

__all__ = ["check_block", "checked_block", "to_numpy"]


def to_numpy(values: Any) -> np.ndarray:
    """A host numpy array from a numpy array, a torch tensor (any device) or an array-like."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def checked_block(
    fn: Callable[[range, range], Any],
    coords: BlockCoords,
    rows: range,
    cols: range,
    dtype: np.dtype[Any],
) -> np.ndarray:
    """Call ``fn(rows, cols)`` for one block; its checked values, C-contiguous ``dtype``."""
    try:
        raw = fn(rows, cols)
    except Exception as exc:
        add_note(
            exc,
            f"infl_array: raised by the block function for block {coords} "
            f"(test rows {rows.start}:{rows.stop}, train cols {cols.start}:{cols.stop}); "
            "nothing was stored for this block.",
        )
        raise
    return check_block(raw, coords, (len(rows), len(cols)), dtype)


def check_block(
    raw: Any, coords: BlockCoords, shape: tuple[int, int], dtype: np.dtype[Any]
) -> np.ndarray:
    """Validate one block's values (shape, dtype, finiteness) and cast them to ``dtype``."""
    where = f"the block function returned for block {coords}"
    try:
        values = to_numpy(raw)
    except Exception as exc:
        raise BlockFunctionError(
            coords,
            f"{where} a {type(raw).__name__}, which is not array-like ({exc}). "
            "Return a numpy array or a torch tensor of shape (len(rows), len(cols)).",
        ) from exc
    if values.shape != shape:
        raise BlockFunctionError(
            coords,
            f"{where} shape {values.shape}; expected {shape} = (len(rows), len(cols)). "
            "Return one value per (test row, train column) of the block.",
        )
    if values.dtype.kind not in "fiu" or not np.can_cast(values.dtype, dtype, "same_kind"):
        raise BlockFunctionError(
            coords,
            f"{where} dtype {values.dtype}; expected real numbers castable to {dtype}. "
            f"Return float values (e.g. values.astype({str(dtype)!r})).",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.ascontiguousarray(values, dtype=dtype)
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise BlockFunctionError(
            coords,
            f"{where} {int((~finite).sum())} non-finite value(s), e.g. {values[tuple(bad)]} at "
            f"local position {tuple(int(b) for b in bad)}; influence values must be finite. "
            "Check the model and loss for overflow (or a too small regularization).",
        )
    return values
