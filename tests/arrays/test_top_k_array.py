"""``arr.top_k_array``: stored top-k rows, lazily filled, resumable, reopened without a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import FeatureFactors, brute_top_k, integer_data, model_array

import infl_array as ia
from infl_array.storage import layout


@pytest.mark.parametrize(
    ("k", "axis", "largest"), [(1, 1, True), (4, 1, False), (5, 0, True), (9, 0, False)]
)
def test_values_and_indices_equal_brute_force(
    tmp_path: Path, k: int, axis: int, largest: bool
) -> None:
    arr, full = model_array(tmp_path / "s", 11, 13, (3, 4))
    tk = arr.top_k_array(k, axis=axis, largest=largest)
    n_rows = full.shape[1 - axis]
    assert tk.shape == tk.values.shape == tk.indices.shape == (n_rows, k)
    assert tk.indices.dtype == np.int64 and tk.values.dtype == arr.dtype
    values, indices = brute_top_k(full, k, axis, largest)
    values, indices = (values, indices) if axis == 1 else (values.T, indices.T)
    np.testing.assert_array_equal(tk.indices[-1], indices[-1])  # one row block computed
    assert tk.computed.tolist() == [False] * (len(tk.computed) - 1) + [True]
    np.testing.assert_array_equal(tk.indices[[0, 5, 2]], indices[[0, 5, 2]])
    np.testing.assert_array_equal(tk.values[1:9:3, ::-1], values[1:9:3, ::-1])
    np.testing.assert_array_equal(tk.indices[np.arange(n_rows) % 2 == 0, 0], indices[::2, 0])
    np.testing.assert_array_equal(np.asarray(tk.values), values)
    np.testing.assert_array_equal(tk.indices.T, indices.T)
    assert tk.indices.max() == indices.max()
    assert tk.computed.all()
    assert not arr.computed.any()  # no matrix block written
    stored = ia.open(tmp_path / "s").top_k_array(k, axis, largest)
    np.testing.assert_array_equal(stored.values[:], values)
    np.testing.assert_array_equal(stored.indices[:], indices)


def test_stored_at_the_layouts_keys_and_seen_by_the_store_report(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 7, 9, (3, 4))
    tk = arr.top_k_array(2, axis=0, largest=False)
    assert tk.fill(progress=False) == 3
    where = layout.top_k(2, axis=0, largest=False)
    assert tk.path == where.path
    group = zarr.open_group(tmp_path / "s", mode="r")
    assert group[where.values.path].shape == group[where.indices.path].shape == (9, 2)
    assert (tmp_path / "s" / where.indices.chunk_key((2, 0))).is_file()
    report = arr.store_report()
    assert report.ok
    assert {where.values.path, where.indices.path} <= {a.array for a in report.arrays}
    chunk = tmp_path / "s" / where.values.chunk_key((1, 0))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert [(d.array, d.what) for d in arr.store_report().damaged] == [
        (where.values.path, "train block 1")
    ]
    assert arr.repair() == []  # no matrix block: the damaged row block is deleted
    assert arr.store_report().ok and tk.computed.tolist() == [True, False, True]
    assert ia.open(tmp_path / "s").store_report().ok
    np.testing.assert_array_equal(tk.values[:], brute_top_k(full, 2, 0, False)[0].T)


def test_reopened_without_a_model_names_a_row_never_computed(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 10, 6, (4, 3))
    arr.top_k_array(3).values[5]  # row block 1 (test points 4:8)
    ro = ia.open(tmp_path / "s").top_k_array(3)
    np.testing.assert_array_equal(ro.indices[4:8], brute_top_k(full, 3, 1, True)[1][4:8])
    with pytest.raises(ia.MissingBlockError, match=r"row block 2 \(test points 8:10\)"):
        ro.values[9]
    with pytest.raises(ValueError, match="needs a model"):
        ro.fill(progress=False)
    with pytest.raises(ia.MissingBlockError, match="holds no top-k array 'topk/axis1-largest-k2'"):
        ia.open(tmp_path / "s").top_k_array(2)
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.6"):
        arr.top_k_array(0)


def test_fill_resumes_after_a_kill_between_the_two_chunks(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 12, 7, (3, 4))
    tk = arr.top_k_array(2)
    tk.values[0]
    where = layout.top_k(2, axis=1, largest=True)
    # a writer killed after its indices chunk, before its values chunk: the row is not there
    bogus = np.full((3, 2), 99, dtype=np.int64)
    zarr.open_array(tmp_path / "s" / where.indices.path, mode="r+")[6:9] = bogus
    assert tk.computed.tolist() == [True, False, False, False]
    model, test, train = FeatureFactors(), integer_data(12, 3, 0), integer_data(7, 3, 1)
    fresh = ia.open(tmp_path / "s", model, test=test, train=train).top_k_array(2)
    assert fresh.fill(progress=False) == 3
    assert fresh.stats.row_blocks_computed == 3
    np.testing.assert_array_equal(fresh.indices[:], brute_top_k(full, 2, 1, True)[1])
    assert fresh.fill(progress=False) == 0


def test_fill_with_two_worker_processes(tmp_path: Path) -> None:
    arr, full = model_array(tmp_path / "s", 13, 10, (3, 4))
    tk = arr.top_k_array(3, axis=0)
    assert tk.fill(progress=False, workers=2) == 3
    assert tk.stats.row_blocks_computed == 3
    stored = ia.open(tmp_path / "s").top_k_array(3, axis=0)
    np.testing.assert_array_equal(stored.indices[:], brute_top_k(full, 3, 0, True)[1].T)
    assert not arr.computed.any()


def test_repr_and_notebook_view(tmp_path: Path) -> None:
    arr, _ = model_array(tmp_path / "s", 7, 5, (3, 4))
    tk = arr.top_k_array(2)
    tk.values[0]
    text = repr(tk)
    assert "TopKArray(" in text and "row blocks computed 1/3" in text and "largest" in text
    html = tk._repr_html_()
    assert "TopKArray" in html and "(7, 2)" in html
    assert "indices" in repr(tk.indices)
    assert tk.stats.row_blocks_computed == 1 and tk.stats.blocks_skipped == 0
