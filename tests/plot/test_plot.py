"""infl_array.plot: each picture's panels, what it reads from a lazy array, and its refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import CountingFn, influence_like
from picture_checks import assert_panels_show_images, image_panel_boxes, read_png

import infl_array as ia
from infl_array.plot import (
    computed_blocks,
    influence_distribution,
    influence_examples,
    self_influence_ranking,
)

ROOT = Path(__file__).resolve().parents[2]


def _lazy(full: np.ndarray, path: Path, block_shape: tuple[int, int]) -> ia.InfluenceArray:
    return ia.InfluenceArray.from_function(
        path, CountingFn(full), shape=full.shape, block_shape=block_shape
    )


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """40 test and 120 train 8x8 digit-like images (random blobs) with labels, two flipped."""
    rng = np.random.default_rng(0)
    x = rng.random((160, 64)) ** 3
    y = rng.integers(0, 10, 160)
    true = y[40:].copy()
    noisy = true.copy()
    noisy[[3, 7]] = (noisy[[3, 7]] + 1) % 10
    return {"test_x": x[:40], "train_x": x[40:], "test_y": y[:40], "train_y": noisy, "true": true}


def test_examples_shows_each_test_row_with_its_tails_and_reads_only_those_rows(
    tmp_path: Path, digits: dict[str, np.ndarray]
) -> None:
    full = influence_like((40, 120), seed=1).astype(np.float64)
    full[5, 3], full[5, 7] = -50.0, -40.0  # the flipped train points are row 5's most harmful
    arr = _lazy(full, tmp_path / "s", (8, 50))
    k = 4
    fig = influence_examples(
        arr,
        digits["test_x"],
        digits["train_x"],
        rows=[5, 17],
        k=k,
        test_labels=digits["test_y"],
        train_labels=digits["train_y"],
        true_train_labels=digits["true"],
        predicted=digits["test_y"],
    )
    # only the block rows of test points 5 and 17 were computed
    assert arr.computed.sum(axis=1).tolist() == [3, 0, 3, 0, 0]
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * (1 + 2 * k)
    titles = [ax.get_title() for ax in image_axes]
    assert titles[0].startswith("test 5") and titles[1].startswith("test 17")
    best = np.lexsort((np.arange(120), -full[5]))[:k]
    helpful_row5 = titles[2 : 2 + k]  # test images first, then row 5's helpful images
    assert [t.split()[0] for t in helpful_row5] == [f"#{j}" for j in best]
    harmful = [t for t in titles if t.startswith(("#3 ", "#7 "))]
    assert len(harmful) == 2 and all("(true" in t for t in harmful)
    texts = " ".join(t.get_text() for sub in fig.subfigs for t in sub.texts)
    assert "most helpful" in texts and "most harmful" in texts
    path = tmp_path / "examples.png"
    fig.savefig(path, dpi=80)
    assert_panels_show_images(read_png(path), image_panel_boxes(fig, 80))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be at least 1"),
        ({"rows": []}, "non-empty list of test indices"),
        ({"train_images": np.zeros((5, 64))}, "in the order of the array's rows and columns"),
        ({"test_images": np.zeros((40, 63))}, "not a square image"),
    ],
)
def test_examples_refuses_bad_input(kwargs: dict, match: str) -> None:
    args = {"test_images": np.zeros((40, 64)), "train_images": np.zeros((120, 64))} | kwargs
    images = {k: args.pop(k) for k in ("test_images", "train_images")}
    with pytest.raises(ValueError, match=match):
        influence_examples(
            np.zeros((40, 120)), images["test_images"], images["train_images"], **args
        )


def test_examples_takes_channel_first_and_flat_images_of_any_shape() -> None:
    from infl_array.plot.examples import as_images

    assert as_images(np.zeros((2, 3, 5, 6)), None, "x").shape == (2, 5, 6, 3)
    assert as_images(np.zeros((2, 1, 5, 6)), None, "x").shape == (2, 5, 6)
    assert as_images(np.zeros((2, 30)), (5, 6), "x").shape == (2, 5, 6)


def test_distribution_reads_one_block_row_and_marks_both_tails(tmp_path: Path) -> None:
    full = influence_like((30, 200), seed=2)
    arr = _lazy(full, tmp_path / "s", (10, 64))
    fig = influence_distribution(arr, 12, k=10)
    assert arr.computed.sum(axis=1).tolist() == [0, 4, 0]
    hist, ranks = fig.axes
    assert [t.get_text() for t in hist.get_legend().get_texts()] == [
        "the rest",
        "10 most helpful",
        "10 most harmful",
    ]
    notes = [t.get_text() for t in ranks.texts]
    assert notes[0].startswith("10 most helpful: ") and notes[1].startswith("10 most harmful: ")
    assert "200 train points on test point 12" in fig.get_suptitle()
    # one row already read works too; a 2-D array needs a row
    assert len(influence_distribution(np.asarray(full[0]), k=5).axes) == 2
    with pytest.raises(ValueError, match="a test row"):
        influence_distribution(full)
    with pytest.raises(IndexError, match="out of range"):
        influence_distribution(full, 30)


def test_self_influence_ranking_marks_flagged_points_and_scores_their_detection() -> None:
    rng = np.random.default_rng(3)
    values = rng.random(300)
    flagged = np.zeros(300, dtype=bool)
    flagged[:15] = True
    values[:15] += 1.0  # flagged points rank first: detection AUC 1
    fig = self_influence_ranking(values, flagged, top=30)
    ranking, curve = fig.axes
    assert ranking.get_yscale() == "log"
    assert "detection AUC 1.000" in curve.get_title()
    assert len(ranking.collections) == 2  # all points, flagged points
    # indices work as flags; no flags: one panel
    same = self_influence_ranking(values, np.arange(15))
    assert same.axes[1].get_title() == curve.get_title()
    assert len(self_influence_ranking(values).axes) == 1
    with pytest.raises(ValueError, match="must have shape"):
        self_influence_ranking(values, flagged[:10])


def test_self_influence_ranking_reads_an_influence_arrays_self_influence() -> None:
    class Backed:
        ndim = 2

        def self_influence(self) -> np.ndarray:
            return np.arange(1.0, 6.0)

    fig = self_influence_ranking(Backed())
    assert "5 train points" in fig.axes[0].get_title()


def test_computed_blocks_draws_the_map_and_computes_nothing(tmp_path: Path) -> None:
    full = influence_like((40, 90), seed=4)
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", fn, shape=full.shape, block_shape=(10, 30)
    )
    arr[15]  # block row 1
    arr[:, 70]  # block column 2
    calls = len(fn.calls)
    fig = computed_blocks(arr)
    assert len(fn.calls) == calls
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(image), arr.computed.astype(float))
    assert "6/12 blocks computed (50%)" in fig.axes[0].get_title()
    two = computed_blocks([arr, arr], titles=["a", "b"])
    assert [ax.get_title() for ax in two.axes[:2]] == ["a", "b"]


def test_computed_blocks_shrinks_a_huge_grid() -> None:
    class Huge:
        shape = (10**7, 10**8)
        computed = np.zeros((2000, 3000), dtype=bool)

    Huge.computed[:1000] = True
    image = np.asarray(computed_blocks(Huge(), max_cells=(100, 100)).axes[0].images[0].get_array())
    assert image.shape == (100, 100)
    assert image[:50].min() == 1.0 and image[50:].max() == 0.0


def test_without_matplotlib_import_names_the_extra_and_the_demo_goes_on() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None
        try:
            import infl_array.plot
        except ImportError as exc:
            assert "pip install 'infl_array[plot]'" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        from pathlib import Path
        from infl_array.demo import write_picture
        assert write_picture(Path("."), None, {}, None, [], 1) is None
        print("OK")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no picture of the test images" in done.stdout and "infl_array[plot]" in done.stdout
    assert done.stdout.strip().endswith("OK")
