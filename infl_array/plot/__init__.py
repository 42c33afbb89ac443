"""Pictures of influence (matplotlib, the ``plot`` extra: ``pip install 'infl_array[plot]'``).

Each function takes arrays (an ``InfluenceArray``, its self-influence, or plain numpy arrays),
reads only what its picture needs, and returns a :class:`matplotlib.figure.Figure` (made
without ``pyplot``, so no global state and no second copy in a notebook; save it with
``fig.savefig(path)``, or let a notebook show it):

* :func:`influence_examples`: test images beside their most helpful and most harmful train
  images, labels written on each, flipped labels marked (reads the chosen test rows).
* :func:`influence_distribution`: one test point's influence over the train set, its helpful
  and harmful tails marked (reads one row).
* :func:`self_influence_ranking`: train points ranked by self-influence, flagged points (known
  or suspected mislabels) marked, with how many of them the ranking finds first.
* :func:`computed_blocks`: the map of a store's computed blocks (reads ``arr.computed``; never
  computes a block).

May import numpy, matplotlib and the array and display layers of infl_array; nothing imports
it but the demo. Without matplotlib, importing it raises an ``ImportError`` that names the
extra.
"""

from __future__ import annotations

from infl_array.plot.blocks import computed_blocks
from infl_array.plot.distribution import influence_distribution
from infl_array.plot.examples import influence_examples
from infl_array.plot.self_influence import self_influence_ranking

__all__ = [
    "computed_blocks",
    "influence_distribution",
    "influence_examples",
    "self_influence_ranking",
]
