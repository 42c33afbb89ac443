"""The HTML a notebook shows for an array: a table of facts and a small map of its blocks.

Generic over array types: an array describes itself as an :class:`ArraySummary` (its kind,
ordered ``(label, text)`` facts, its grid of computed blocks and its notes) and
:func:`array_html` renders that, so every array type shares one look. The map of blocks is an
inline SVG of at most ``32 x 64`` cells (:func:`~infl_array.display.block_map.block_map`
shrinks larger grids; a cell's shade is the fraction of its blocks computed), drawn as one
path per shade, so the HTML stays a few kilobytes whatever the grid's size. Everything shown
is escaped; the HTML has no script and no external resource.

>>> s = ArraySummary("InfluenceArray", (("shape", "(3, 4)"),), np.ones((1, 2), dtype=bool))
>>> html = array_html(s)
>>> "<svg" in html and "InfluenceArray" in html and "2/2 blocks computed" in html
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape

import numpy as np

from infl_array.display.block_map import BlockMap, block_map

__all__ = ["ArraySummary", "array_html", "map_svg"]

MAX_CELLS = (32, 64)
_SHADES = 4  # fractions in (0, 1] are drawn in this many shades
_MAP_PX = (120, 240)  # the map's largest height and width in pixels
_DONE = "#16a34a"
_EMPTY = "#e5e7eb"


@dataclass(frozen=True, slots=True)
class ArraySummary:
    """What an array shows of itself in a notebook.

    Attributes
    ----------
    kind : str
        The array's type, the table's title (``"InfluenceArray"``).
    facts : tuple of (str, str)
        ``(label, text)`` rows in display order (shape, block shape, store, backend, bytes).
    computed : numpy.ndarray
        Boolean grid of blocks, 2-D (or 1-D for one row of blocks): which are stored.
    notes : mapping of str to str
        What computing the values found, ``{key: message}``; shown as warnings.
    """

    kind: str
    facts: tuple[tuple[str, str], ...]
    computed: np.ndarray
    notes: Mapping[str, str] = field(default_factory=dict)


def _runs(levels: np.ndarray, level: int) -> str:
    """SVG path commands covering the cells of ``levels`` equal to ``level``, run by run."""
    parts = []
    for y, row in enumerate(levels):
        hit = np.concatenate(([False], row == level, [False]))
        edges = np.flatnonzero(hit[1:] != hit[:-1])
        parts += [
            f"M{a} {y}h{b - a}v1h{a - b}z" for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
    return "".join(parts)


def map_svg(shrunk: BlockMap) -> str:
    """An inline SVG of a block map: grey for missing, green shaded by the fraction computed."""
    rows, cols = shrunk.fraction.shape
    cell = max(2.0, min(16.0, _MAP_PX[0] / rows, _MAP_PX[1] / cols))
    levels = np.ceil(shrunk.fraction * _SHADES).astype(int)
    per = shrunk.blocks_per_cell
    title = f"{shrunk.computed}/{shrunk.total} blocks computed" + (
        f"; each cell is up to {per[0]} x {per[1]} blocks, darker = more computed"
        if per != (1, 1)
        else "; one cell per block"
    )
    paths = "".join(
        f'<path fill="{_DONE}" fill-opacity="{level / _SHADES:.2f}" d="{_runs(levels, level)}"/>'
        for level in range(1, _SHADES + 1)
        if (levels == level).any()
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{cols * cell:.0f}" '
        f'height="{rows * cell:.0f}" viewBox="0 0 {cols} {rows}" preserveAspectRatio="none" '
        f'shape-rendering="crispEdges"><title>{escape(title)}</title>'
        f'<rect width="{cols}" height="{rows}" fill="{_EMPTY}"/>{paths}</svg>'
    )


def array_html(summary: ArraySummary, max_cells: tuple[int, int] = MAX_CELLS) -> str:
    """The HTML of ``summary``: a table of its facts beside a map of its computed blocks."""
    shrunk = block_map(summary.computed, max_cells)
    pct = 100 * shrunk.computed / shrunk.total
    cell = "text-align:left;padding:1px 8px 1px 0;vertical-align:top;font-size:12px"
    facts = "".join(
        f'<tr><th style="{cell};font-weight:normal;color:#6b7280">{escape(label)}</th>'
        f'<td style="{cell}">{escape(text)}</td></tr>'
        for label, text in summary.facts
    )
    caption = f"{shrunk.computed}/{shrunk.total} blocks computed ({pct:.1f}%)" + (
        f", map cells of up to {shrunk.blocks_per_cell[0]} x {shrunk.blocks_per_cell[1]} blocks"
        if shrunk.blocks_per_cell != (1, 1)
        else ""
    )
    notes = "".join(
        f"<li><b>{escape(key)}</b>: {escape(message)}</li>"
        for key, message in sorted(summary.notes.items())
    )
    notes_html = (
        '<div style="color:#b45309;margin-top:4px">notes on how its values were computed:'
        f'<ul style="margin:2px 0 0 16px;padding:0">{notes}</ul></div>'
        if notes
        else ""
    )
    return (
        '<div class="infl-array-repr" style="font-family:sans-serif;font-size:12px;'
        'line-height:1.4">'
        f'<div style="font-weight:bold;margin-bottom:2px">{escape(summary.kind)}</div>'
        '<div style="display:flex;gap:16px;align-items:flex-start">'
        f'<table style="border-collapse:collapse">{facts}</table>'
        f'<figure style="margin:0">{map_svg(shrunk)}'
        f'<figcaption style="font-size:11px;max-width:240px">{escape(caption)}</figcaption>'
        "</figure></div>"
        f"{notes_html}</div>"
    )
