"""Checks of what a person sees in a saved figure: its size and that its panels are not blank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def image_panel_boxes(fig: Any, dpi: float) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(top, bottom, left, right)`` of the axes of ``fig`` that show an image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    FigureCanvasAgg(fig).draw()
    height = fig.bbox.height
    boxes = []
    for ax in fig.axes:
        if ax.images:
            bb = ax.get_window_extent()
            boxes.append((round(height - bb.y1), round(height - bb.y0), round(bb.x0), round(bb.x1)))
    return boxes


def read_png(path: Path) -> np.ndarray:
    """The PNG's pixels as grey levels in [0, 1], shape (height, width)."""
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), pixels.shape
    return pixels[..., :3].mean(axis=2)


def assert_panels_show_images(grey: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> None:
    """Each box holds a picture: dark and light pixels, not one flat colour."""
    assert boxes, "no image panels"
    for top, bottom, left, right in boxes:
        inner = grey[top + 4 : bottom - 4, left + 4 : right - 4]  # inside any frame
        assert inner.size > 100, (top, bottom, left, right)
        assert inner.std() > 0.1, f"panel {(top, bottom, left, right)} is blank"
        assert inner.min() < 0.3 and inner.max() > 0.7, (top, bottom, left, right)


def assert_demo_picture(store: Path, result: dict[str, Any], out: str) -> None:
    """The demo's PNG: named in its output, the figure's size, every image panel drawn.

    The panels' places come from the same figure made again from the store (read-only), the
    demo's data and its saved model.
    """
    import torch

    import infl_array as ia
    from infl_array.demo import DPI, MODEL_FILE, PICTURE_FILE, demo_figure, load_digits_split

    path = result["picture"]
    assert path == store / PICTURE_FILE and path.exists()
    assert str(path) in out
    model = torch.nn.Linear(64, 10).double()
    model.load_state_dict(torch.load(store / MODEL_FILE, weights_only=True))
    data = load_digits_split()
    with torch.no_grad():
        predicted = model(torch.as_tensor(data["x_test"])).argmax(1).numpy()
    rows = result["shown"]
    fig = demo_figure(ia.open(store), data, predicted, rows, k=5)
    boxes = image_panel_boxes(fig, DPI)
    assert len(boxes) == len(rows) * (1 + 2 * 5)  # a test image, 5 helpful, 5 harmful
    grey = read_png(path)
    width, height = fig.get_size_inches() * DPI
    assert abs(grey.shape[0] - height) <= 1 and abs(grey.shape[1] - width) <= 1, grey.shape
    assert width > 1000 and height > 150 * len(rows)
    assert_panels_show_images(grey, boxes)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "(true " in titles  # flipped labels are marked
