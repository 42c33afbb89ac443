"""The main job end to end, on a small real data set that ships with scikit-learn.

Hand-written digits (1,797 8x8 images, 10 classes) are split into train and test; 5% of the
train labels are flipped on purpose. A softmax regression is trained on the noisy labels, and
the influence of every train image on every test image is computed with ``DirectInfluence``
into a store. For a few test images the demo shows the most helpful and the most harmful train
images; harmful ones are very often the flipped labels. It draws the same as a picture with
:mod:`infl_array.plot` (the ``plot`` extra, part of ``demo``), ``demo_influence.png`` in the
store's directory; without matplotlib it says how to get the picture and goes on. Run it
twice: the second run reads the store and computes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from infl_array.arrays.influence import InfluenceArray, open_array

__all__ = ["load_digits_split", "run", "train_model"]

MODEL_FILE = "demo_model.pt"
FLIP_FRACTION = 0.05
REGULARIZATION = 1e-3
BLOCK_SHAPE = (64, 256)
PICTURE_FILE = "demo_influence.png"
DPI = 110


def load_digits_split(seed: int = 0) -> dict[str, Any]:
    """Digits, scaled to [0, 1], split 80/20, with 5% of the train labels flipped."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise SystemExit(
            "the demo needs scikit-learn for its data set: pip install 'infl_array[demo]'"
        ) from exc
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    n_train = int(0.8 * len(y))
    y_train = y[:n_train].copy()
    flipped = rng.choice(n_train, size=int(FLIP_FRACTION * n_train), replace=False)
    y_train[flipped] = (y_train[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    return {
        "x_train": x[:n_train],
        "y_train": y_train,
        "y_train_true": y[:n_train],
        "x_test": x[n_train:],
        "y_test": y[n_train:],
        "flipped": np.sort(flipped),
    }


def train_model(data: dict[str, Any], seed: int = 0) -> Any:
    """Softmax regression (650 parameters) trained to convergence with L-BFGS."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10).double()
    x = torch.as_tensor(data["x_train"])
    y = torch.as_tensor(data["y_train"])
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss = loss + 0.5 * REGULARIZATION * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _flip_note(j: int, data: dict[str, Any], test_label: int, title: str) -> str:
    """Why a train image with a flipped label shows up where it does."""
    note = f"  <- label flipped (true {data['y_train_true'][j]})"
    if title == "most helpful" and data["y_train"][j] == test_label:
        # its wrong label is this test image's label: it pulls the model toward that label
        note += "; its wrong label is this test image's label, which it reinforces"
    return note


def run(store: str | Path, k: int = 5, show: int = 3) -> dict[str, Any]:
    """Build (or reuse) the demo store and print the most helpful / harmful train points."""
    import torch

    store = Path(store)
    t0 = time.perf_counter()
    data = load_digits_split()
    model, arr = _demo_array(store, data)
    n_blocks = arr.grid_shape[0] * arr.grid_shape[1]
    already = int(arr.computed.sum())
    arr.fill(progress=True)
    helpful_v, helpful_i = arr.top_k(k, axis=1, largest=True)
    harmful_v, harmful_i = arr.top_k(k, axis=1, largest=False)
    with torch.no_grad():
        predicted = model(torch.as_tensor(data["x_test"])).argmax(1).numpy()
    wrong = np.flatnonzero(predicted != data["y_test"])
    picks = list(dict.fromkeys([*wrong[:1].tolist(), 0, 1, 2]))[:show]
    print(f"\n{arr!r}\n")
    _print_picks(picks, data, predicted, (helpful_v, helpful_i), (harmful_v, harmful_i))
    picture = write_picture(store, arr, data, predicted, picks, k)
    harmful_flipped = np.isin(harmful_i, data["flipped"]).mean()
    helpful_same = (data["y_train"][helpful_i] == data["y_test"][:, None]).mean()
    computed = arr.stats.blocks_computed
    print(
        f"\nacross all {arr.shape[0]} test images: {100 * helpful_same:.0f}% of the {k} most "
        f"helpful train images share the test label; {100 * harmful_flipped:.0f}% of the {k} "
        f"most harmful have a flipped label (flipped: {100 * FLIP_FRACTION:.0f}% of the data)."
    )
    print(
        f"this run computed {computed} blocks and read {n_blocks - computed} from the store "
        f"({already} were there at start) in {time.perf_counter() - t0:.1f} s; "
        f"run again to reuse them, or try: infl-array top {store} --k 5 --test 0"
    )
    if picture is not None:
        print(f"the picture of these test images and their train images: {picture}")
    return {
        "computed": computed,
        "read": n_blocks - computed,
        "harmful_flipped": float(harmful_flipped),
        "helpful_same_label": float(helpful_same),
        "picture": picture,
        "shown": picks,
    }


def _demo_array(store: Path, data: dict[str, Any]) -> tuple[Any, InfluenceArray]:
    """The demo's model (trained, or loaded from the store) and its influence array."""
    import torch

    from infl_array.torch import DirectInfluence

    model_path = store / MODEL_FILE
    reuse = model_path.exists()
    if reuse:
        model = torch.nn.Linear(64, 10).double()
        model.load_state_dict(torch.load(model_path, weights_only=True))
        print(f"reusing the store {str(store)!r} and its trained model")
    else:
        print("training a softmax regression on 1,437 digits (5% labels flipped)...")
        model = train_model(data)
    test = (data["x_test"], data["y_test"])
    train = (data["x_train"], data["y_train"])
    influence = DirectInfluence(
        model, torch.nn.functional.cross_entropy, regularization=REGULARIZATION
    ).fit(train)
    if reuse:
        arr = open_array(store, influence, test=test, train=train)
    else:
        arr = InfluenceArray.create(
            store, influence, test=test, train=train, block_shape=BLOCK_SHAPE
        )
        torch.save(model.state_dict(), model_path)
    return model, arr


def _print_picks(
    picks: list[int],
    data: dict[str, Any],
    predicted: np.ndarray,
    helpful: tuple[np.ndarray, np.ndarray],
    harmful: tuple[np.ndarray, np.ndarray],
) -> None:
    """Print each picked test image with its most helpful and most harmful train images."""
    flipped = set(data["flipped"].tolist())
    for i in picks:
        print(
            f"test image {i}: label {data['y_test'][i]}, predicted {predicted[i]}"
            + ("  (misclassified)" if predicted[i] != data["y_test"][i] else "")
        )
        for title, (values, idx) in (("most helpful", helpful), ("most harmful", harmful)):
            print(f"  {title} train images:")
            for value, j in zip(values[i], idx[i], strict=True):
                note = _flip_note(j, data, int(data["y_test"][i]), title) if j in flipped else ""
                print(f"    #{j:<5d} label {data['y_train'][j]}  influence {value:+.4g}{note}")


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
