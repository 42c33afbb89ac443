"""matplotlib, imported once with a message naming the extra when it is missing.

Figures are made with :class:`matplotlib.figure.Figure` directly (not ``pyplot``): nothing is
registered globally, the caller's backend is untouched, and ``fig.savefig`` picks Agg.
"""

from __future__ import annotations

from typing import Any

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "infl_array.plot draws with matplotlib, which is not installed. Install the plot extra: "
        "pip install 'infl_array[plot]'"
    ) from exc

__all__ = ["HARMFUL", "HELPFUL", "NEUTRAL", "Figure", "new_figure"]

HELPFUL = "#15803d"
HARMFUL = "#b91c1c"
NEUTRAL = "#9ca3af"


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A figure of ``width x height`` inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained", **kwargs)
