"""How a lazy array answers numpy's functions, operators and ufuncs.

numpy hands a non-ndarray to its functions through ``__array_function__`` (NEP 18) and to
ufuncs and operators through ``__array_ufunc__`` (NEP 13). A lazy array answers:

* **streamed reductions**, computed block by block with bounded memory and numpy's signature
  (``axis``, ``dtype``, ``out``, ``keepdims``, ``ddof``): ``np.sum``, ``np.mean``, ``np.min``,
  ``np.max`` (``np.amin``, ``np.amax``), ``np.argmin``, ``np.argmax``, ``np.std``, ``np.var``,
  and their ``np.nan*`` variants (stored values are never NaN, so they are the same);
* **metadata**: ``np.shape``, ``np.ndim``, ``np.size``, ``np.result_type``;
* **everything else** (``np.median``, ``np.sort``, ufuncs such as ``np.exp``, arithmetic and
  comparisons) needs the whole array at once. It is never done implicitly: a ``TypeError``
  names the explicit routes (materialise on purpose with ``np.asarray``, read a slice first,
  or go through ``arr.to_dask()``), so nothing large is computed by accident and nothing
  returns a silently wrong answer (``arr == arr`` is not ``True``).

This module knows numpy only; the reductions themselves live in :mod:`infl_array.arrays.reduce`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["array_function", "check_unsupported", "finish", "refusal"]

REDUCTIONS = ("sum", "mean", "min", "max", "argmin", "argmax", "std", "var")
_REDUCTION_OF: dict[Any, str] = {getattr(np, name): name for name in REDUCTIONS}
_REDUCTION_OF.update(
    {getattr(np, a): n for a, n in (("amin", "min"), ("amax", "max")) if hasattr(np, a)}
)
# stored values are always finite (blocks with NaN or inf are refused), so the nan-variants
# (which xarray calls by default) are the same reductions
_REDUCTION_OF.update({getattr(np, "nan" + name): name for name in REDUCTIONS})
_METADATA: dict[Any, Callable[[Any], Any]] = {
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a: a.size,
}


def array_function(arr: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``arr.__array_function__``: dispatch a numpy function (see the module docstring)."""
    if func in _METADATA and len(args) == 1 and not kwargs:
        return _METADATA[func](arr)
    if func is np.result_type:
        return np.result_type(*(a.dtype if a is arr else a for a in args), **kwargs)
    name = _REDUCTION_OF.get(func)
    if name is not None and args and args[0] is arr:
        return getattr(arr, name)(*args[1:], **kwargs)
    raise refusal(arr, f"np.{getattr(func, '__name__', func)}")


def refusal(arr: Any, what: str) -> TypeError:
    """The error for an operation that needs the whole array: it names the explicit routes."""
    shape = " x ".join(map(str, arr.shape))
    return TypeError(
        f"{what} is not computed lazily on a {type(arr).__name__} ({shape}, "
        f"{arr.nbytes / 2**30:.2f} GiB as numpy): it needs every value at once. Choose a route "
        f"on purpose: read a slice first ({what}(arr[rows, cols]) or np.asarray(arr[...])), "
        "materialise the whole array (np.asarray(arr), refused above materialize_limit_bytes), "
        "or use arr.to_dask() (lazy, block by block). Streamed without materialising: "
        "np.sum, np.mean, np.min, np.max, np.argmin, np.argmax, np.std, np.var and arr.top_k."
    )


def check_unsupported(name: str, unsupported: dict[str, Any]) -> None:
    """``TypeError`` for reduction keywords a lazy array does not take (numpy's ``where=``...)."""
    if unsupported:
        keys = ", ".join(sorted(unsupported))
        raise TypeError(
            f"{name}() of a lazy array does not support {keys}; supported: axis, dtype, out, "
            f"keepdims (and ddof for std/var). Apply np.{name} with {keys} to a slice "
            "(np.asarray(arr[rows, cols])) instead."
        )


def finish(
    result: Any,
    *,
    axis: int | None,
    ndim: int,
    keepdims: bool,
    dtype: Any,
    out: np.ndarray | None,
    name: str,
) -> Any:
    """Apply numpy's ``dtype``, ``keepdims`` and ``out`` to a reduction's result."""
    value = np.asarray(result)
    if dtype is not None:
        value = value.astype(dtype)
    if keepdims:
        value = np.expand_dims(value, tuple(range(ndim)) if axis is None else axis)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array; got {type(out).__name__}.")
        if out.shape != value.shape:
            raise ValueError(
                f"out has shape {out.shape}, but {name}() gives shape {value.shape}; pass an "
                f"array of shape {value.shape} (or keepdims to match)."
            )
        out[...] = value
        return out
    return value[()] if value.ndim == 0 else value
