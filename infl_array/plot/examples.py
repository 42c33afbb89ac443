"""Test images beside their most helpful and most harmful train images.

One row per chosen test image: the test image (its label, and the prediction when given),
then its ``k`` most helpful train images, then its ``k`` most harmful, each titled with its
train index, influence and label. A train image whose label differs from its true label (when
``true_train_labels`` are given, e.g. labels flipped on purpose) gets a red frame and
``label a (true b)``. Only the chosen test rows are read from the array (``arr[rows]``: their
block rows are computed if missing, nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from infl_array.plot.figure import HARMFUL, HELPFUL, Figure, new_figure
from infl_array.plot.rows import chosen_rows, ranked

__all__ = ["as_images", "influence_examples"]

_PANEL_IN = 1.05  # inches per image panel


def as_images(images: Any, image_shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """``images`` as ``(n, H, W)`` or ``(n, H, W, C)``; flat rows are reshaped.

    Flat rows ``(n, D)`` take ``image_shape``, or a square ``sqrt(D) x sqrt(D)`` image when
    ``D`` is a perfect square. Channels-first ``(n, C, H, W)`` with ``C`` in (1, 3, 4) is
    moved to channels-last.
    """
    x = np.asarray(images)
    if image_shape is not None:
        return x.reshape(len(x), *image_shape)
    if x.ndim == 2:
        side = round(np.sqrt(x.shape[1]))
        if side * side != x.shape[1]:
            raise ValueError(
                f"{what} are flat rows of {x.shape[1]} values, not a square image; pass "
                "image_shape=(height, width) or (height, width, channels)."
            )
        return x.reshape(len(x), side, side)
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = np.moveaxis(x, 1, -1)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{what} must be (n, H, W), (n, H, W, C), (n, C, H, W) or flat (n, D); got "
            f"shape {x.shape}. Pass image_shape= to reshape them."
        )
    return x


def _label(labels: np.ndarray | None, i: int, names: Sequence[str] | None) -> str:
    if labels is None:
        return ""
    value = labels[i]
    return str(names[int(value)]) if names is not None else str(value)


def _show(ax: Any, image: np.ndarray, cmap: str, frame: str | None) -> None:
    ax.imshow(image, cmap=cmap if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)


def _images(
    test_images: Any, train_images: Any, image_shape: Any, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Test and train images as arrays of images, one per row and column of the array."""
    test_x = as_images(test_images, image_shape, "test_images")
    train_x = as_images(train_images, image_shape, "train_images")
    if (len(test_x), len(train_x)) != shape:
        raise ValueError(
            f"the array has {shape[0]} test and {shape[1]} train points, but "
            f"{len(test_x)} test and {len(train_x)} train images came; pass the images in the "
            "order of the array's rows and columns."
        )
    return test_x, train_x


def _labels(test: Any, train: Any, true: Any, pred: Any) -> dict[str, Any]:
    """The labels written on the images, as arrays (None where not given)."""
    given = {"test": test, "train": train, "true": true, "pred": pred}
    return {name: None if v is None else np.asarray(v) for name, v in given.items()}


def _panels(n_rows: int, k: int) -> tuple[Figure, Any]:
    """The figure and its three titled columns: test images, most helpful, most harmful."""
    fig = new_figure(_PANEL_IN * (2 * k + 1.4), _PANEL_IN * 1.3 * n_rows + 0.6)
    parts: Any = fig.subfigures(1, 3, width_ratios=[1.4, k, k], wspace=0.01)
    for part, text, colour in zip(
        parts,
        ("test image", "most helpful", "most harmful"),
        ("black", HELPFUL, HARMFUL),
        strict=True,
    ):
        part.suptitle(text, fontsize=10, fontweight="bold", color=colour)
    return fig, parts


def _draw_rows(
    fig: Figure,
    parts: Any,
    indices: Any,
    values: np.ndarray,
    k: int,
    images: tuple[np.ndarray, np.ndarray],
    labels: dict[str, Any],
    class_names: Sequence[str] | None,
    cmap: str,
) -> None:
    """One row a test image: it, its ``k`` most helpful and ``k`` most harmful train images."""
    n_rows, (test_x, train_x) = len(indices), images
    test_axes = parts[0].subplots(n_rows, 1, squeeze=False)[:, 0]
    train_axes = np.hstack([p.subplots(n_rows, k, squeeze=False) for p in parts[1:]])
    any_flipped = False
    for r, i in enumerate(indices):
        _draw_test(test_axes[r], i, test_x[i], labels, class_names, cmap)
        order = [*ranked(values[r], k, largest=True), *ranked(values[r], k, largest=False)]
        for ax, j in zip(train_axes[r], order, strict=True):
            any_flipped |= _draw_train(ax, j, train_x[j], values[r, j], labels, class_names, cmap)
    if any_flipped:
        fig.supxlabel(
            "red frame: a train image whose label was flipped (its true label in parentheses)",
            fontsize=8,
            color=HARMFUL,
        )


def _draw_test(
    ax: Any,
    i: int,
    image: np.ndarray,
    labels: dict[str, Any],
    class_names: Sequence[str] | None,
    cmap: str,
) -> None:
    """Test image ``i`` with its label and prediction (red when wrong)."""
    _show(ax, image, cmap, None)
    title = f"test {i}\nlabel {_label(labels['test'], i, class_names)}"
    wrong = False
    if labels["pred"] is not None:
        title += f", pred {_label(labels['pred'], i, class_names)}"
        wrong = labels["test"] is not None and labels["pred"][i] != labels["test"][i]
    ax.set_title(title, fontsize=7.5, color=HARMFUL if wrong else "black")


def _draw_train(
    ax: Any,
    j: int,
    image: np.ndarray,
    value: float,
    labels: dict[str, Any],
    class_names: Sequence[str] | None,
    cmap: str,
) -> bool:
    """Train image ``j`` with its influence and label, framed red when flipped; whether it is."""
    flipped = bool(labels["true"] is not None and labels["true"][j] != labels["train"][j])
    _show(ax, image, cmap, HARMFUL if flipped else None)
    text = f"#{j} {value:+.3g}\nlabel {_label(labels['train'], j, class_names)}"
    if flipped:
        text += f" (true {_label(labels['true'], j, class_names)})"
    ax.set_title(text, fontsize=7.5, color=HARMFUL if flipped else "black")
    return flipped


def influence_examples(
    arr: Any,
    test_images: Any,
    train_images: Any,
    *,
    rows: Sequence[int] | np.ndarray = (0, 1, 2),
    k: int = 5,
    test_labels: Any = None,
    train_labels: Any = None,
    true_train_labels: Any = None,
    predicted: Any = None,
    class_names: Sequence[str] | None = None,
    image_shape: tuple[int, ...] | None = None,
    cmap: str = "gray_r",
) -> Figure:
    """A figure of test images with their ``k`` most helpful and ``k`` most harmful train images.

    Parameters
    ----------
    arr : InfluenceArray or numpy.ndarray
        Influence of shape ``(n_test, n_train)``; only ``arr[rows]`` is read.
    test_images, train_images : array_like
        Images in the order of the array's rows and columns: ``(n, H, W)``, ``(n, H, W, C)``,
        ``(n, C, H, W)`` or flat ``(n, D)`` (see ``image_shape``). Torch tensors on the CPU
        work as they are.
    rows : sequence of int
        The test images to show, one figure row each.
    k : int
        Helpful and harmful train images per test image.
    test_labels, train_labels : array_like, optional
        Labels written on each image.
    true_train_labels : array_like, optional
        The true labels; a train image whose ``train_labels`` entry differs is marked flipped.
    predicted : array_like, optional
        The model's predictions on the test images; a wrong one is written in red.
    class_names : sequence of str, optional
        Names of the integer labels.
    image_shape : tuple of int, optional
        Shape of one image, for flat rows that are not square.
    cmap : str
        Colour map of single-channel images.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    indices, values = chosen_rows(arr, rows)
    n_train = values.shape[1]
    k = min(k, n_train)
    test_x, train_x = _images(test_images, train_images, image_shape, (arr.shape[0], n_train))
    labels = _labels(test_labels, train_labels, true_train_labels, predicted)
    fig, parts = _panels(len(indices), k)
    _draw_rows(fig, parts, indices, values, k, (test_x, train_x), labels, class_names, cmap)
    return fig
