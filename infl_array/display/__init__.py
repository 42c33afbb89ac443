"""Views of arrays for people: the block map and the notebook's HTML.

Owns how an array is shown (numpy and the standard library only): :mod:`.block_map` shrinks
a grid of computed blocks to a map of bounded size, :mod:`.html` renders an
:class:`~infl_array.display.html.ArraySummary` as the small HTML table a notebook shows for
``arr``. Imports nothing else of infl_array, so every array type (``InfluenceArray`` today)
may import it.
"""

from __future__ import annotations

from infl_array.display.block_map import BlockMap, block_map
from infl_array.display.html import ArraySummary, array_html

__all__ = ["ArraySummary", "BlockMap", "array_html", "block_map"]
