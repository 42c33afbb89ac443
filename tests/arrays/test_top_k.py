"""``arr.top_k`` without the dense matrix: exact against brute force, writes no matrix block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FeatureFactors,
    ScaledProductFactors,
    block_fn_module_level,
    brute_top_k,
    model_array,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import infl_array as ia
from infl_array.engine.top_k import ScanCounts, block_best, merge_best, scan_top_k, worst_kept


@settings(max_examples=25, deadline=None)
@given(
    n_test=st.integers(1, 13),
    n_train=st.integers(1, 17),
    rows=st.integers(1, 5),
    cols=st.integers(1, 6),
    axis=st.sampled_from([0, 1]),
    largest=st.booleans(),
    k_frac=st.floats(0.0, 1.0),
    stored=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 16)), max_size=4),
    seed=st.integers(0, 3),
)
def test_top_k_equals_brute_force_and_writes_no_block(
    tmp_path_factory: pytest.TempPathFactory,
    n_test: int,
    n_train: int,
    rows: int,
    cols: int,
    axis: int,
    largest: bool,
    k_frac: float,
    stored: list[tuple[int, int]],
    seed: int,
) -> None:
    path = tmp_path_factory.mktemp("topk") / "s"
    arr, full = model_array(path, n_test, n_train, (rows, cols), seed)
    for i, j in stored:  # some blocks stored beforehand: read, not recomputed
        arr[i % n_test, j % n_train]
    before = arr.computed.copy()
    k = round(k_frac * full.shape[axis])
    values, indices = arr.top_k(k, axis=axis, largest=largest)
    expected_values, expected_indices = brute_top_k(full, k, axis, largest)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(arr.computed, before)  # no matrix block written


@settings(max_examples=200, deadline=None)
@given(
    r=st.integers(1, 6),
    m=st.integers(1, 30),
    k=st.integers(1, 32),
    spread=st.integers(0, 4),
    largest=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_blocks_best_equals_the_stable_sort(
    r: int, m: int, k: int, spread: int, largest: bool, seed: int
) -> None:
    values = np.random.default_rng(seed).integers(-spread, spread + 1, size=(r, m)) * 0.5
    got_values, got_indices = block_best(values, 7, k, largest)
    expected_values, expected_indices = brute_top_k(values, min(k, m), 1, largest)
    np.testing.assert_array_equal(got_indices, expected_indices + 7)
    np.testing.assert_array_equal(got_values, expected_values)


@settings(max_examples=200, deadline=None)
@given(
    r=st.integers(1, 5),
    m=st.integers(16, 400),
    k=st.integers(1, 12),
    spread=st.integers(0, 6),
    special=st.sampled_from([None, np.nan, -np.inf, np.inf]),
    share=st.floats(0.0, 0.9),
    largest=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_wide_blocks_best_cut_by_its_first_columns_equals_the_stable_sort(
    r: int,
    m: int,
    k: int,
    spread: int,
    special: float | None,
    share: float,
    largest: bool,
    seed: int,
) -> None:
    """A block with at least 16 columns per ``k`` is cut by the k-th best of its first columns
    before the sort: the stable sort's answer, with ties, NaN and infinities anywhere."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-spread, spread + 1, size=(r, m)) * 0.5
    if special is not None:
        values[rng.random((r, m)) < share] = special
    got_values, got_indices = block_best(values, 3, k, largest)
    expected_values, expected_indices = brute_top_k(values, k, 1, largest)
    np.testing.assert_array_equal(got_indices, expected_indices + 3)
    np.testing.assert_array_equal(got_values, expected_values)


@settings(max_examples=200, deadline=None)
@given(
    r=st.integers(1, 5),
    n=st.integers(1, 120),
    k=st.integers(1, 40),
    width=st.integers(1, 50),
    spread=st.integers(0, 6),
    special=st.sampled_from([None, np.nan, -np.inf, np.inf]),
    largest=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dropping_entries_worse_than_the_kth_keeps_the_brute_force_answer(
    r: int,
    n: int,
    k: int,
    width: int,
    spread: int,
    special: float | None,
    largest: bool,
    seed: int,
) -> None:
    """Blocks in any order, each cut to the entries not worse than the running k-th best
    (packed when few remain): the stable sort's answer, NaN and infinities included."""
    rng = np.random.default_rng(seed)
    row = rng.integers(-spread, spread + 1, size=(r, n)) * 0.5
    if special is not None:
        row[rng.random((r, n)) < 0.2] = special
    k = min(k, n)
    starts = list(range(0, n, width))
    rng.shuffle(starts)
    best = None
    for start in starts:
        worst = worst_kept(best, k, largest)
        found = block_best(row[:, start : start + width], start, k, largest, worst)
        best = merge_best(best, found, k, largest)
    assert best is not None
    expected_values, expected_indices = brute_top_k(row, k, 1, largest)
    np.testing.assert_array_equal(best[1], expected_indices)
    np.testing.assert_array_equal(best[0], expected_values)


def test_ties_go_to_the_lower_index_in_any_visiting_order() -> None:
    rng = np.random.default_rng(0)
    row = rng.integers(0, 3, size=(4, 40)).astype(np.float64)
    for largest in (True, False):
        expected = brute_top_k(row, 7, 1, largest)
        best = None
        for start in (30, 10, 0, 20):  # blocks visited out of order
            best = merge_best(
                best, block_best(row[:, start : start + 10], start, 7, largest), 7, largest
            )
        assert best is not None
        np.testing.assert_array_equal(best[1], expected[1])
        np.testing.assert_array_equal(best[0], expected[0])


def test_stored_blocks_are_read_and_missing_ones_computed_in_memory(tmp_path: Path) -> None:
    arr, _ = model_array(tmp_path / "s", 9, 14, (3, 5))
    arr[:3, :5]  # block (0, 0)
    arr.top_k(4)
    tk = arr.top_k_array(4)
    tk.values[:3]  # row block 0: one block read, two computed
    assert (tk.stats.blocks_read, tk.stats.blocks_computed) == (1, 2)
    assert arr.computed.sum() == 1


def test_factor_product_backends_are_respected(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 8, 11, (3, 4), model=ScaledProductFactors())
    for largest in (True, False):
        values, indices = arr.top_k(5, largest=largest)
        expected = brute_top_k(full, 5, 1, largest)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(values, expected[0])


def test_lossy_stores_rank_the_values_they_store(tmp_path: Path) -> None:
    model = FeatureFactors()
    rng = np.random.default_rng(1)
    test = (rng.standard_normal((7, 3)), np.zeros(7))
    train = (rng.standard_normal((20, 3)), np.zeros(20))
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        model,
        test=test,
        train=train,
        block_shape=(3, 6),
        compression=ia.Compression(keepbits=2),
    )
    values, indices = arr.top_k(6)  # computed in memory, nothing stored
    assert not arr.computed.any()
    expected = brute_top_k(np.asarray(arr), 6, 1, True)  # the stored (rounded) matrix
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(values, expected[0])


def test_k_out_of_range_is_refused_as_torch_topk_does(tmp_path: Path) -> None:
    arr, _ = model_array(tmp_path / "s", 4, 6, (2, 3))
    with pytest.raises(ValueError, match=r"k must be an int in 0\.\.6 .*got 7.*k <= 6"):
        arr.top_k(7)
    with pytest.raises(ValueError, match=r"0\.\.4 .*axis 0"):
        arr.top_k(5, axis=0)
    with pytest.raises(ValueError, match=r"got 2\.5"):
        arr.top_k(2.5)  # type: ignore[arg-type]
    assert not arr.computed.any()


def test_function_backed_arrays_still_store_their_blocks(tmp_path: Path) -> None:
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", block_fn_module_level, shape=(7, 9), block_shape=(3, 4)
    )
    _, indices = arr.top_k(3, axis=0, largest=False)
    full = block_fn_module_level(range(7), range(9))
    np.testing.assert_array_equal(indices, brute_top_k(full, 3, 0, False)[1])
    assert arr.computed.all()


def test_read_only_stores_answer_from_stored_blocks_and_name_a_missing_one(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 6, 8, (3, 4))
    arr[:, :4]  # block column 0 stored
    ro = ia.open(tmp_path / "s")
    with pytest.raises(ia.MissingBlockError, match=r"block \(0, 1\)"):
        ro.top_k(2)
    arr.fill(progress=False)
    values, indices = ro.top_k(2, axis=0)
    np.testing.assert_array_equal(indices, brute_top_k(full, 2, 0, True)[1])
    np.testing.assert_array_equal(values, brute_top_k(full, 2, 0, True)[0])


@pytest.mark.parametrize(("axis", "largest"), [(1, True), (1, False), (0, True)])
def test_skipping_by_factor_norms_is_exact_and_skips_hopeless_blocks(
    tmp_path: Path, axis: int, largest: bool
) -> None:
    rng = np.random.default_rng(3)
    train_x = rng.standard_normal((60, 4)) * np.geomspace(100.0, 0.01, 60)[:, None]
    test_x = rng.standard_normal((30, 4)) * np.geomspace(100.0, 0.01, 30)[:, None]
    train, test = (train_x, np.zeros(60)), (test_x, np.zeros(30))
    arr = ia.InfluenceArray.create(
        tmp_path / "s", FeatureFactors(), test=test, train=train, block_shape=(5, 6)
    )
    arr[:5, :6]  # a stored block is skipped like any other
    engine = arr._engine
    n = engine.grid_shape[1 - axis]
    counts = ScanCounts()
    found = scan_top_k(engine, 3, axis, largest, range(n), counts, skip=True)
    expected_values, expected_indices = brute_top_k(np.asarray(arr), 3, axis, largest)
    values = np.concatenate([found[b][0] for b in range(n)])
    indices = np.concatenate([found[b][1] for b in range(n)])
    if axis == 0:
        values, indices = values.T, indices.T
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)
    assert counts.blocks_skipped > 0
    assert counts.blocks_skipped + counts.blocks_read + counts.blocks_computed == 60


def test_no_skipping_for_backends_with_a_factor_product(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 8, 12, (2, 3), model=ScaledProductFactors())
    counts = ScanCounts()
    found = scan_top_k(arr._engine, 2, 1, True, range(4), counts, skip=True)
    assert counts.blocks_skipped == 0 and counts.blocks_computed == 16
    np.testing.assert_array_equal(found[3][1], brute_top_k(full, 2, 1, True)[1][6:8])
