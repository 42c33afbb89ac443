"""Train points ranked by self-influence, flagged points marked.

Self-influence ``grad^T (H + lambda*Id)^-1 grad`` is large for points the model finds hard to
fit; mislabelled points rank near the top. The left panel shows the values from largest to
smallest (log axis when all are positive) with flagged points (known flips, or those a person
marked) in red; the right one, when there are flagged points, how many of them are found by
checking the highest-ranked points first, against checking in random order, with the
detection AUC (:func:`infl_array.quality.detection_auc`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infl_array.plot.figure import HARMFUL, NEUTRAL, Figure, new_figure
from infl_array.quality import detection_auc

__all__ = ["self_influence_ranking"]


def _values(arr: Any) -> np.ndarray:
    """Self-influence values: an ``InfluenceArray``'s (computed where missing) or 1-D values."""
    if getattr(arr, "ndim", None) == 2 and hasattr(arr, "self_influence"):
        arr = arr.self_influence()
    values = np.asarray(arr[...], dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"expected self-influence values (1-D), a SelfInfluenceArray, or an InfluenceArray "
            f"backed by a model; got shape {values.shape}. Pass arr.self_influence()."
        )
    return values


def _draw_found(
    curve: Any, values: np.ndarray, mask: np.ndarray, order: np.ndarray, top: int | None
) -> None:
    """The fraction of flagged points found against the fraction checked, by self-influence."""
    n = values.size
    rank = np.arange(1, n + 1)
    found = np.cumsum(mask[order]) / mask.sum()
    curve.plot(rank / n, found, color=HARMFUL, label="by self-influence")
    curve.plot([0, 1], [0, 1], color=NEUTRAL, linestyle="--", label="random order")
    if top is not None:
        curve.axvline(top / n, color="black", linestyle="--", linewidth=0.8)
    curve.set_xlabel("fraction of train points checked")
    curve.set_ylabel("fraction of flagged points found")
    auc = detection_auc(values, mask)
    curve.set_title(f"{int(mask.sum())} flagged points; detection AUC {auc:.3f}", fontsize=10)
    curve.legend(fontsize=8, loc="lower right")


def self_influence_ranking(arr: Any, flagged: Any = None, *, top: int | None = None) -> Figure:
    """Train points ranked by self-influence, ``flagged`` ones marked.

    Parameters
    ----------
    arr : InfluenceArray, SelfInfluenceArray or array_like
        An ``InfluenceArray`` backed by a model (its ``self_influence()`` is read whole,
        computing the chunks not yet stored), a ``SelfInfluenceArray``, or 1-D values.
    flagged : array_like, optional
        Boolean mask of length ``n_train``, or train indices, of points to mark (e.g. labels
        known to be flipped).
    top : int, optional
        Draw a line after the ``top`` highest-ranked points (the ones a person would check).

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = _values(arr)
    n = values.size
    mask = np.zeros(n, dtype=bool)
    if flagged is not None:
        given = np.asarray(flagged)
        if given.dtype == bool:
            if given.shape != (n,):
                raise ValueError(f"a flagged mask must have shape ({n},); got {given.shape}")
            mask = given
        else:
            mask[given.astype(np.int64)] = True
    order = np.argsort(-values, kind="stable")
    rank = np.arange(1, n + 1)
    fig = new_figure(9 if mask.any() else 5, 3.4)
    axes = fig.subplots(1, 2 if mask.any() else 1, squeeze=False)[0]
    ax = axes[0]
    ax.scatter(
        rank[~mask[order]], values[order][~mask[order]], s=4, color=NEUTRAL, label="train point"
    )
    if mask.any():
        ax.scatter(
            rank[mask[order]], values[order][mask[order]], s=10, color=HARMFUL, label="flagged"
        )
        ax.legend(fontsize=8)
    if (values > 0).all():
        ax.set_yscale("log")
    if top is not None:
        ax.axvline(top, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("rank (largest self-influence first)")
    ax.set_ylabel("self-influence")
    ax.set_title(f"{n} train points by self-influence", fontsize=10)
    if mask.any():
        _draw_found(axes[1], values, mask, order, top)
    return fig
