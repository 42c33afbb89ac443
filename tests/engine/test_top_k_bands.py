"""Top-k fills by bands: exact, each factor block once per fill, resumable, shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FeatureFactors, brute_top_k, integer_data, model_array

import infl_array as ia
from infl_array.engine.top_k_bands import BandPlan, band_engine
from infl_array.storage import layout


@pytest.mark.parametrize(
    ("k", "axis", "largest", "workers"),
    [(1, 1, True, None), (3, 1, False, None), (4, 0, True, None), (2, 1, True, 2)],
)
def test_a_fill_by_bands_equals_the_brute_force_and_leaves_no_bands(
    tmp_path: Path, k: int, axis: int, largest: bool, workers: int | None
) -> None:
    arr, full = model_array(tmp_path / "s", 70, 70, (3, 4))
    tk = arr.top_k_array(k, axis=axis, largest=largest)
    n_blocks = arr.grid_shape[axis]
    plan = BandPlan.of(arr.shape[axis], arr.block_shape[axis], k)
    assert plan.n_bands > 1
    assert tk.fill(progress=False, workers=workers) == len(tk.computed)
    values, indices = brute_top_k(full, k, axis, largest)
    values, indices = (values, indices) if axis == 1 else (values.T, indices.T)
    np.testing.assert_array_equal(tk.indices[:], indices)  # ties: the lower index first
    np.testing.assert_array_equal(tk.values[:], values)
    stats = tk.stats
    assert stats.bands_computed == plan.n_bands
    # every factor block of the reduced side computed once and never read back
    assert (stats.train_factors if axis == 1 else stats.test_factors) == n_blocks
    if workers is None:
        assert stats.factor_reads == 0
    assert not arr.computed.any()  # no matrix block written
    assert not any("/bands" in p for p in arr._engine.store.array_paths())
    assert tk.fill(progress=False) == 0


def test_bands_with_stored_matrix_blocks_read_them(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 10, 40, (3, 4))
    arr[:, 4:9]  # stores the matrix blocks of train block 1 and 2 (rounded as stored)
    stored = arr.computed.copy()
    tk = arr.top_k_array(3)
    tk.fill(progress=False)
    assert tk.stats.blocks_read == int(stored.sum()) and tk.stats.bands_computed == 2
    np.testing.assert_array_equal(tk.indices[:], brute_top_k(full, 3, 1, True)[1])
    assert (arr.computed == stored).all()


def test_the_factors_of_each_band_are_read_once_by_each_fill(tmp_path: Path) -> None:
    """With the factors stored, a second top-k array's fill reads each train factor block
    once (the rows of every test block at once), whatever the number of row blocks."""
    arr, full = model_array(tmp_path / "s", 15, 23, (3, 4))
    arr.top_k_array(2).fill(progress=False)  # computes and stores the factors
    test, train = integer_data(15, 3, 0), integer_data(23, 3, 1)
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train)
    tk = again.top_k_array(5)
    tk.fill(progress=False)
    n_train_blocks, n_test_blocks = arr.grid_shape[1], arr.grid_shape[0]
    assert tk.stats.train_factors == 0
    assert tk.stats.factor_reads == n_train_blocks + n_test_blocks
    np.testing.assert_array_equal(tk.indices[:], brute_top_k(full, 5, 1, True)[1])


def test_a_killed_fill_resumes_with_the_bands_not_stored(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 10, 80, (4, 3))
    tk = arr.top_k_array(3, largest=False)
    where = layout.top_k(3, axis=1, largest=False)
    bands = band_engine(arr._engine, where, missing_rows=3)
    assert bands is not None
    n_bands = bands.grid_shape[0]
    assert bands.compute([(0, 0), (2, 0)]) == 2  # then the filler is killed
    assert tk.fill(progress=False) == 3
    assert tk.stats.bands_computed == n_bands - 2
    np.testing.assert_array_equal(tk.indices[:], brute_top_k(full, 3, 1, False)[1])
    np.testing.assert_array_equal(tk.values[:], brute_top_k(full, 3, 1, False)[0])


def test_rows_read_before_a_fill_are_scanned_and_few_missing_rows_skip_the_bands(
    tmp_path: Path,
) -> None:
    arr, full = model_array(tmp_path / "s", 12, 17, (3, 5))
    tk = arr.top_k_array(2)
    tk.values[:7]  # three of four row blocks, each scanned over every train point
    assert tk.fill(progress=False) == 1
    assert tk.stats.bands_computed == 0
    np.testing.assert_array_equal(tk.indices[:], brute_top_k(full, 2, 1, True)[1])


def test_a_band_is_at_least_k_points_long() -> None:
    plan = BandPlan.of(n_inner=41, inner_block=4, k=5)
    n_blocks = -(-41 // 4)
    lengths = [
        min(41, plan.blocks(b).stop * 4) - plan.blocks(b).start * 4 for b in range(plan.n_bands)
    ]
    assert sum(lengths) == 41 and min(lengths) >= 5
    assert plan.blocks(plan.n_bands - 1).stop == n_blocks
    assert BandPlan.of(n_inner=7, inner_block=4, k=7).n_bands == 1


@pytest.mark.parametrize(("largest", "threads"), [(True, 3), (False, 2), (True, 1)])
def test_rows_selected_by_several_threads_equal_the_brute_force(
    monkeypatch: pytest.MonkeyPatch, largest: bool, threads: int
) -> None:
    """A band's products are selected by threads, each over its own rows: with many ties (small
    integers) and blocks of every width, the merged answer is the brute force, ties to the lower
    index, however the rows are cut."""
    from concurrent.futures import ThreadPoolExecutor

    from infl_array.engine import top_k_bands

    monkeypatch.setattr(top_k_bands, "SELECT_THREADS", threads)
    rng = np.random.default_rng(threads)
    n_rows, widths, k = 3 * top_k_bands.MIN_SELECT_ROWS + 5, [40, 7, 300, 1, 64], 9
    full = rng.integers(-3, 4, size=(n_rows, sum(widths))).astype(np.float32)
    best: dict = {}
    with ThreadPoolExecutor(threads) as pool:
        first = 0
        for width in widths:
            part = np.ascontiguousarray(full[:, first : first + width])
            top_k_bands.select_rows(pool, best, part, 0, first, k, largest)
            first += width
    assert len(best) == min(threads, n_rows // top_k_bands.MIN_SELECT_ROWS)
    values = np.concatenate([best[s][0] for s in sorted(best)])
    indices = np.concatenate([best[s][1] for s in sorted(best)])
    want_v, want_i = brute_top_k(full, k, 1, largest)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(values, want_v)
