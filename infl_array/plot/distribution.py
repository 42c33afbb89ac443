"""How one test point's influence spreads over the train set, helpful and harmful tails marked.

Two panels over one row of influence (``arr[row]``: computes only its block row): the
histogram of the values (count on a log axis, so the thin tails stay visible) with the ``k``
most helpful in green and the ``k`` most harmful in red, and the values sorted from most
helpful to most harmful, the same tails coloured, with the share of the total absolute
influence each tail holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infl_array.plot.figure import HARMFUL, HELPFUL, NEUTRAL, Figure, new_figure
from infl_array.plot.rows import ranked, read_row

__all__ = ["influence_distribution"]


def _draw_ranks(ax: Any, values: np.ndarray, helpful: Any, harmful: Any, k: int) -> None:
    """Values sorted, most helpful first, each tail coloured with its share of |influence|."""
    order = np.argsort(-values, kind="stable")
    position = np.arange(values.size)
    colours = np.full(values.size, NEUTRAL, dtype=object)
    colours[:k], colours[values.size - k :] = HELPFUL, HARMFUL
    ax.scatter(position, values[order], c=list(colours), s=4, linewidths=0)
    ax.axhline(0, color="black", linewidth=0.8)
    total = np.abs(values).sum()
    for idx, colour, where, name in (
        (helpful, HELPFUL, 0.98, "helpful"),
        (harmful, HARMFUL, 0.08, "harmful"),
    ):
        share = np.abs(values[idx]).sum() / total if total else 0.0
        ax.text(
            0.98,
            where,
            f"{k} most {name}: {100 * share:.0f}% of |influence|",
            transform=ax.transAxes,
            ha="right",
            va="top" if where > 0.5 else "bottom",
            color=colour,
            fontsize=8,
        )
    ax.set_xlabel("train points, most helpful first")
    ax.set_ylabel("influence")


def influence_distribution(
    arr: Any, row: int | None = None, *, k: int = 20, bins: int = 60
) -> Figure:
    """The distribution of one test point's influence, its ``k`` most helpful and harmful marked.

    Parameters
    ----------
    arr : InfluenceArray, numpy.ndarray or 1-D array
        ``(n_test, n_train)`` influence, of which ``arr[row]`` is read; or one row already read
        (then leave ``row`` out).
    row : int, optional
        The test point.
    k : int
        Size of each tail.
    bins : int
        Histogram bins.

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = read_row(arr, row)
    if k < 1 or bins < 1:
        raise ValueError(f"k and bins must be at least 1; got k={k}, bins={bins}")
    k = min(k, values.size)
    helpful = ranked(values, k, largest=True)
    harmful = ranked(values, k, largest=False)
    rest = np.ones(values.size, dtype=bool)
    rest[helpful] = rest[harmful] = False
    fig = new_figure(9, 3.4)
    hist, ranks = fig.subplots(1, 2)
    edges = np.histogram_bin_edges(values, bins=bins)
    hist.hist(
        [values[rest], values[helpful], values[harmful]],
        bins=edges,
        stacked=True,
        color=[NEUTRAL, HELPFUL, HARMFUL],
        label=["the rest", f"{k} most helpful", f"{k} most harmful"],
        log=True,
    )
    hist.axvline(0, color="black", linewidth=0.8)
    hist.set_xlabel("influence (positive = helpful)")
    hist.set_ylabel("train points")
    hist.legend(fontsize=8)
    _draw_ranks(ranks, values, helpful, harmful, k)
    label = f"test point {row}" if row is not None else "one test point"
    fig.suptitle(f"Influence of {values.size} train points on {label}", fontsize=11)
    return fig
