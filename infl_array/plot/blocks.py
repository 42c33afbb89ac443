"""The map of a store's computed blocks, drawn from ``arr.computed`` alone (computes nothing).

Axes are in test and train indices, so a band of filled rows sits where those rows are. Grids
larger than ``max_cells`` are shrunk by :func:`~infl_array.display.block_map.block_map` (a
cell's shade is the fraction of its blocks computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infl_array.display.block_map import block_map
from infl_array.plot.figure import Figure, new_figure

__all__ = ["computed_blocks"]


def computed_blocks(
    arrays: Any, *, titles: Sequence[str] | None = None, max_cells: tuple[int, int] = (400, 400)
) -> Figure:
    """One map per array of which blocks are stored (green) and missing (grey).

    Parameters
    ----------
    arrays : InfluenceArray or sequence of InfluenceArray
        Anything with ``computed``, ``shape`` and ``block_shape`` (a 2-D array).
    titles : sequence of str, optional
        A title per map (default: the array's shape and what is computed).
    max_cells : tuple of int
        Cells per axis at most; larger grids are shrunk.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import LinearSegmentedColormap

    many = [arrays] if hasattr(arrays, "computed") else list(arrays)
    if not many:
        raise ValueError("computed_blocks needs at least one array; got none")
    fig = new_figure(4.6 * len(many), 4)
    axes = fig.subplots(1, len(many), squeeze=False)[0]
    cmap = LinearSegmentedColormap.from_list("computed", ["#e5e7eb", "#16a34a"])
    for n, (ax, arr) in enumerate(zip(axes, many, strict=True)):
        shrunk = block_map(arr.computed, max_cells)
        n_test, n_train = arr.shape
        image = ax.imshow(
            shrunk.fraction,
            cmap=cmap,
            vmin=0,
            vmax=1,
            extent=(0, n_train, n_test, 0),
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xlabel("train index")
        ax.set_ylabel("test index")
        pct = 100 * shrunk.computed / shrunk.total
        title = f"{shrunk.computed}/{shrunk.total} blocks computed ({pct:.0f}%)"
        ax.set_title(titles[n] if titles is not None else title, fontsize=10)
    fig.colorbar(image, ax=list(axes), label="fraction of blocks computed", shrink=0.8)
    return fig
