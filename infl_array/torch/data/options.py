"""Validation of the backends' constructor arguments, shared by the torch backends."""

from __future__ import annotations

from typing import overload

import numpy as np

__all__ = [
    "HESSIAN_AVERAGES",
    "loss_name",
    "optional_positive_int",
    "check_seed",
    "parse_hessian_average",
    "positive_int",
]

HESSIAN_AVERAGES = ("sample", "batch")


def positive_int(value: object, name: str) -> int:
    """Validate a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def optional_positive_int(value: object, name: str) -> int | None:
    """Validate a positive integer or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)


@overload
def check_seed(value: object) -> int: ...
@overload
def check_seed(value: object, *, global_ok: bool) -> int | None: ...
def check_seed(value: object, *, global_ok: bool = False) -> int | None:
    """Validate a seed: an integer >= 0 (numpy integers too), or, where ``global_ok``, ``None``
    for torch's global generator.

    >>> check_seed(3), check_seed(None, global_ok=True)
    (3, None)
    """
    if value is None and global_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        if global_ok:
            raise ValueError(
                "seed must be an integer or None (an integer >= 0 seeds a generator of its own, "
                f"None draws from torch's global generator), got {value!r}."
            )
        raise ValueError(f"seed must be an integer >= 0, got {value!r}.")
    return int(value)


def parse_hessian_average(value: object) -> str:
    """Validate ``hessian_average``: ``"sample"`` or ``"batch"``."""
    if value not in HESSIAN_AVERAGES:
        raise ValueError(
            f"hessian_average must be 'sample' (the mean loss over all points) or 'batch' "
            f"(pyDVL's equal weighting of the fit DataLoader's batches), got {value!r}."
        )
    return str(value)


def loss_name(loss: object) -> str:
    """Qualified name of a loss function or loss module (for configs and messages)."""
    qual = getattr(loss, "__qualname__", None)
    if qual is None:
        qual = type(loss).__qualname__
        module = type(loss).__module__
    else:
        module = getattr(loss, "__module__", None) or type(loss).__module__
    return f"{module}.{qual}"
