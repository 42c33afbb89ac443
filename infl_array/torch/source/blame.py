"""Which sample made a computation over a range of samples fail.

The influence model computes the factors (or a block against raw train data) of a range of
samples at once, so one bad sample (a label out of range, a NaN input) fails the whole range
with a message naming no sample (``IndexError: Target 3 is out of bounds``, ``test factors
contains 15 non-finite values``). :func:`blamed` runs the computation and, when it fails,
bisects the range (about ``2 log2 n`` more calls, on the failure path only) to the first
sample that fails on its own, and raises :class:`~infl_array.errors.SampleError` naming the
data set and that sample's index, with the original error as its cause. When the failure
belongs to no single sample (every sample fails alike, or only the range as a whole fails)
the original error is raised unchanged. Memory errors are never bisected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from infl_array.errors import SampleError

__all__ = ["blamed", "first_failing"]

T = TypeVar("T")


def _fails(run: Callable[[range], object], r: range) -> bool:
    try:
        run(r)
    except MemoryError:
        raise
    except Exception:
        return True
    return False


def first_failing(run: Callable[[range], object], r: range) -> int | None:
    """The first sample of ``r`` on which ``run`` fails alone, when another sample passes.

    ``run(r)`` is known to fail. None when no single sample is to blame.
    """
    span = r
    while len(span) > 1:
        half = range(span.start, span.start + len(span) // 2)
        if _fails(run, half):
            span = half
            continue
        rest = range(half.stop, span.stop)
        if not _fails(run, rest):
            return None  # only together do they fail
        span = rest
    if len(r) == 1:
        return span.start
    other = r.start if span.start != r.start else r.stop - 1
    return None if _fails(run, range(other, other + 1)) else span.start


def blamed(run: Callable[[range], T], r: range, data: str, what: str) -> T:
    """``run(r)``; a failure caused by one sample is re-raised naming it.

    Parameters
    ----------
    run : callable
        Computes something of the samples of a range.
    r : range
        The samples (indices in the data set ``data``).
    data : str
        ``"test"`` or ``"train"``.
    what : str
        What ``run`` computes, for the message (e.g. ``"EkfacInfluence's train factors"``).
    """
    try:
        return run(r)
    except MemoryError:
        raise
    except Exception as exc:
        bad = first_failing(run, r)
        if bad is None:
            raise
        raise SampleError(
            data,
            bad,
            f"{data} sample {bad} cannot be used: computing {what} of samples "
            f"{r.start}..{r.stop - 1} failed at it ({type(exc).__name__}: {exc}). Expected a "
            "sample the model and loss accept (labels in the model's range of classes, finite "
            f"inputs); fix or drop {data} sample {bad} (index {bad} of the {data} data).",
        ) from exc
