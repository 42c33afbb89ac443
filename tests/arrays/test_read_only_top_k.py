"""Top-k on a read-only store opened with a model: answers in memory, refuses to store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faults import snapshot
from helpers import FeatureFactors, brute_top_k, integer_data, model_array
from zarr.storage import LocalStore

import infl_array as ia


def _read_only(path: Path) -> ia.InfluenceArray:
    model, test, train = FeatureFactors(), integer_data(10, 3, 0), integer_data(6, 3, 1)
    return ia.open(LocalStore(path, read_only=True), model, test=test, train=train)


def test_top_k_is_answered_in_memory_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    arr, full = model_array(path, 10, 6, (4, 3))
    arr[0, 0]  # one block and its factors stored; the rest is missing
    before = snapshot(path)
    values, indices = _read_only(path).top_k(2)
    want_values, want_indices = brute_top_k(full, 2, 1, True)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    assert snapshot(path) == before


def test_top_k_arrays_are_refused_with_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "s"
    arr, full = model_array(path, 10, 6, (4, 3))
    arr.top_k_array(2).values[0]  # row block 0 of one top-k array stored
    before = snapshot(path)
    ro = _read_only(path)
    with pytest.raises(PermissionError, match=r"top-k array 'topk/axis1-largest-k3'.*read-only"):
        ro.top_k_array(3)
    tk = ro.top_k_array(2)
    np.testing.assert_array_equal(tk.indices[:4], brute_top_k(full, 2, 1, True)[1][:4])
    with pytest.raises(PermissionError, match=r"block \(1, 0\).*read-only.*Nothing was written"):
        tk.fill(progress=False)
    with pytest.raises(PermissionError, match=r"block \(2, 0\).*read-only"):
        tk.values[9]
    assert snapshot(path) == before
