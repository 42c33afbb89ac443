"""The demo's picture: its test images beside their most helpful and most harmful train images.

Written next to the demo's store as ``demo_influence.png`` with :mod:`infl_array.plot` (the
``plot`` extra, part of the ``demo`` extra). Without matplotlib the demo says how to get the
picture and goes on without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DPI", "PICTURE_FILE", "demo_figure", "write_picture"]

PICTURE_FILE = "demo_influence.png"
DPI = 110


def write_picture(
    store: Path, arr: Any, data: dict[str, Any], predicted: np.ndarray, rows: list[int], k: int
) -> Path | None:
    """Save the figure of ``rows`` into ``store``; its path, or None without matplotlib."""
    try:
        fig = demo_figure(arr, data, predicted, rows, k)
    except ImportError as exc:
        print(f"\nno picture of the test images: {exc}")
        return None
    path = store / PICTURE_FILE
    fig.savefig(path, dpi=DPI)
    return path


def demo_figure(
    arr: Any, data: dict[str, Any], predicted: np.ndarray, rows: list[int], k: int
) -> Any:
    """The demo's figure (:func:`infl_array.plot.influence_examples` of its data)."""
    from infl_array.plot import influence_examples

    fig = influence_examples(
        arr,
        data["x_test"],
        data["x_train"],
        rows=rows,
        k=k,
        test_labels=data["y_test"],
        train_labels=data["y_train"],
        true_train_labels=data["y_train_true"],
        predicted=predicted,
    )
    fig.suptitle(
        "Which train images helped (green) and hurt (red) each test prediction",
        fontsize=12,
    )
    return fig
