"""No chunk is larger than it must be (issue 21): a ``block_shape`` larger than the matrix is
clipped to it, and no stored chunk exceeds what the codec can compress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import LoggedFactors, indexed_data

import infl_array as ia
from infl_array.storage import factors as factor_module
from infl_array.storage.meta import MAX_CHUNK_BYTES


def ramp(rows: range, cols: range) -> np.ndarray:
    return np.add.outer(np.asarray(rows, dtype=float), np.asarray(cols, dtype=float))


def stored_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_block_shape_larger_than_the_matrix_is_clipped_to_it(tmp_path: Path) -> None:
    store = tmp_path / "s"
    huge = (1 << 20, 1 << 22)  # unclipped: a 16 TiB chunk allocation for a 240 KB matrix
    arr = ia.InfluenceArray.from_function(store, ramp, shape=(60, 1000), block_shape=huge)
    assert arr.block_shape == (60, 1000) and arr.grid_shape == (1, 1)
    np.testing.assert_array_equal(arr[:], ramp(range(60), range(1000)))
    assert stored_bytes(store) < 1 << 20
    # reopening with the block shape first asked for is the same store, not a stale one
    again = ia.open(store, fn=ramp, block_shape=huge)
    assert again.block_shape == (60, 1000)


def test_one_axis_is_clipped_and_the_other_kept(tmp_path: Path) -> None:
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", ramp, shape=(1000, 10), block_shape=(256, 4096)
    )
    assert arr.block_shape == (256, 10) and arr.grid_shape == (4, 1)


def test_a_block_shape_whose_chunks_exceed_the_codec_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"block_shape=\(50000, 50000\).*2\*\*31 - 1") as info:
        ia.InfluenceArray.from_function(
            tmp_path / "s", ramp, shape=(10**6, 10**6), block_shape=(50_000, 50_000)
        )
    assert "9.3 GiB" in str(info.value) and "(256, 4096)" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_factor_chunks_are_sized_by_the_data_not_the_block(tmp_path: Path) -> None:
    store = tmp_path / "s"
    test, train = indexed_data(6, seed=1), indexed_data(9, seed=2)
    model = LoggedFactors(str(tmp_path / "log"), width=3)
    arr = ia.InfluenceArray.create(store, model, test=test, train=train, block_shape=(256, 4))
    arr.fill(progress=False)
    group = zarr.open_group(store, mode="r")
    assert group["factors/test"].chunks == (6, 3)
    assert group["factors/train"].chunks == (4, 3)


def test_a_factor_side_wider_than_the_codec_limit_is_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synthetic wide source: with the limit lowered to a few hundred bytes, factor blocks of
    4 x 16 float64 (512 bytes) are over it, as a 2.1M-parameter EK-FAC's test block is over the
    real limit; that side is then not stored, and the values are still right."""
    monkeypatch.setattr(factor_module, "MAX_CHUNK_BYTES", 300)
    store = tmp_path / "s"
    test, train = indexed_data(8, seed=1), indexed_data(3, seed=2)
    model = LoggedFactors(str(tmp_path / "log"), width=16)
    arr = ia.InfluenceArray.create(
        store, model, test=test, train=train, block_shape=(4, 2), dtype="float64"
    )
    got = arr[:]
    want = np.asarray(model.test_factors(*test) @ model.train_factors(*train).T)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not (store / "factors" / "test").exists()  # 4 x 16 x 8 = 512 bytes > 300
    assert (store / "factors" / "train").exists()  # 2 x 16 x 8 = 256 bytes <= 300
    assert MAX_CHUNK_BYTES < 2**31 - 1
