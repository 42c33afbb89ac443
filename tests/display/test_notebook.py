"""In a notebook: an array's HTML view (facts, a bounded map of blocks, rendered by a real
browser) and progress bars that render there (tqdm.auto)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import CountingFn, influence_like
from picture_checks import read_png

import infl_array as ia
from infl_array.display import ArraySummary, array_html, block_map

DONE_RGB = (0x16, 0xA3, 0x4A)  # computed blocks
EMPTY_RGB = (0xE5, 0xE7, 0xEB)  # missing blocks


@pytest.fixture
def half_filled(tmp_path: Path) -> ia.InfluenceArray:
    full = influence_like((40, 90), seed=5)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(10, 30)
    )
    arr[:20]  # block rows 0 and 1: 6 of 12 blocks
    return arr


def test_repr_html_shows_the_facts_and_a_map_of_the_blocks(
    half_filled: ia.InfluenceArray, tmp_path: Path
) -> None:
    html = half_filled._repr_html_()
    for text in ("InfluenceArray", "(40, 90)", "float32", "(10, 30), grid (4, 3)", "CountingFn"):
        assert text in html, text
    assert "computes missing blocks" in html and "stored" in html and "KiB" in html
    assert "read-only" in ia.open(tmp_path / "s")._repr_html_()
    assert "6/12 blocks computed (50.0%)" in html
    assert "<svg" in html and "<script" not in html
    assert repr(half_filled).count("6/12") == 1  # repr keeps its text
    # one path per shade: here only full cells, the two computed rows of 3 blocks each
    assert 'fill-opacity="1.00" d="M0 0h3v1h-3zM0 1h3v1h-3z"' in html


def test_map_of_a_huge_grid_stays_small_and_keeps_partial_cells_visible() -> None:
    rng = np.random.default_rng(0)
    computed = rng.random((4000, 2500)) < 0.5  # a worst case: no runs to merge
    html = array_html(ArraySummary("InfluenceArray", (("shape", "(1e6, 1e7)"),), computed))
    assert len(html) < 40_000
    assert "map cells of up to 125 x 40 blocks" in html
    shrunk = block_map(computed)
    assert shrunk.fraction.shape == (32, 64)
    assert shrunk.fraction.min() > 0.45 and shrunk.fraction.max() < 0.55
    one = np.zeros((3, 1000), dtype=bool)
    one[0, 0] = True  # one block of 3,000 still shows
    assert block_map(one).fraction.max() > 0


def test_notes_and_facts_are_escaped() -> None:
    summary = ArraySummary(
        "InfluenceArray",
        (("store", "<b>x</b>"),),
        np.ones(3, dtype=bool),  # a 1-D row of blocks (a self-influence array's)
        {"not_positive_definite": "<script>alert(1)</script>"},
    )
    html = array_html(summary)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x" in html
    assert "not_positive_definite" in html and "3/3 blocks computed" in html


def test_block_map_refuses_what_is_not_a_grid() -> None:
    with pytest.raises(ValueError, match=r"Pass arr\.computed"):
        block_map(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="at least"):
        block_map(np.zeros((2, 2), dtype=bool), max_cells=(0, 3))


def _chromium() -> str:
    """The headless browser, or a failure in CI (where .ci/run installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but no chromium on PATH: .ci/run installs it (apt-get install chromium)"
        )
    pytest.skip("no chromium on PATH (apt-get install chromium); CI runs this test")


@pytest.mark.browser
def test_repr_html_renders_in_a_headless_browser(
    half_filled: ia.InfluenceArray, tmp_path: Path
) -> None:
    page = tmp_path / "repr.html"
    page.write_text(f"<!DOCTYPE html><html><body>{half_filled._repr_html_()}</body></html>")
    shot = tmp_path / "repr.png"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=640,240",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from matplotlib.image import imread

    rgb = np.round(imread(shot)[..., :3] * 255).astype(int)
    assert rgb.shape[:2] == (240, 640)
    grey = read_png(shot)
    assert grey.std() > 0.05  # text and a map, not a blank page

    def pixels(colour: tuple[int, int, int]) -> np.ndarray:
        return np.argwhere((np.abs(rgb - np.array(colour)) <= 2).all(axis=2))

    done_px = pixels(DONE_RGB)
    assert len(done_px) > 500
    in_map = (slice(None), slice(done_px[:, 1].min(), done_px[:, 1].max() + 1))
    empty_px = pixels(EMPTY_RGB)
    empty_px = empty_px[(empty_px[:, 1] >= in_map[1].start) & (empty_px[:, 1] < in_map[1].stop)]
    assert len(empty_px) > 500
    # the computed half (block rows 0-1) is drawn above the missing half (rows 2-3)
    assert done_px[:, 0].max() < empty_px[:, 0].min() + 2
    assert abs(len(done_px) - len(empty_px)) < 0.2 * len(done_px)
    # the table of facts is left of the map: dark text pixels there
    left = grey[:, : done_px[:, 1].min()]
    assert (left < 0.3).sum() > 200


def test_progress_bars_come_from_tqdm_auto() -> None:
    """tqdm.auto draws a widget in a notebook and text elsewhere; plain tqdm only text."""
    from tqdm.auto import tqdm

    from infl_array.engine.progress import counter_bar

    bar = counter_bar(3, enabled=True, desc="fill")
    assert isinstance(bar, tqdm)
    bar.close()
    plain = []
    for path in Path(ia.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            plain += [
                f"{path.name}: {n}" for n in names if n.startswith("tqdm") and n != "tqdm.auto"
            ]
    assert not plain, plain
