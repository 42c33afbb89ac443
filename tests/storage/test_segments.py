"""Segment records and top-k bases of grown stores: damage is named, repaired or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FeatureFactors, brute_top_k, integer_data

import infl_array as ia
from infl_array.errors import NotAStoreError
from infl_array.storage import layout
from infl_array.storage.segments import Segment, write_segment
from infl_array.storage.store import InfluenceStore


def grown(path: Path) -> tuple[ia.InfluenceArray, np.ndarray]:
    test, train, more = integer_data(6, 3, 0), integer_data(9, 3, 1), integer_data(5, 3, 2)
    arr = ia.InfluenceArray.create(
        path, FeatureFactors(), test=test, train=train, block_shape=(2, 4)
    )
    arr.top_k_array(3).fill(progress=False)
    arr.append_train(more)
    return arr, test[0] @ np.concatenate([train[0], more[0]]).T


def test_a_damaged_base_chunk_is_repaired_by_a_full_scan(tmp_path: Path) -> None:
    arr, full = grown(tmp_path / "s")
    base = layout.top_k(3, 1, True).base(9)
    chunk = tmp_path / "s" / base.values.chunk_key((1, 0))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert [(d.array, d.what) for d in arr.store_report().damaged] == [
        (base.values.path, "test block 1")
    ]
    assert arr.repair() == [] and arr.store_report().ok
    tk = arr.top_k_array(3)
    values, indices = brute_top_k(full, 3, 1, True)
    np.testing.assert_array_equal(tk.indices[:], indices)
    np.testing.assert_array_equal(tk.values[:], values)
    assert tk.stats.blocks_computed + tk.stats.blocks_read == 2 * 2 + 4  # row 1 scans all 4


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (b"not json", "damaged segment record"),
        (b'{"side": "train", "index": 1}', "damaged segment record"),
    ],
)
def test_a_damaged_segment_record_is_named(tmp_path: Path, record: bytes, match: str) -> None:
    grown(tmp_path / "s")
    (tmp_path / "s" / layout.segment_key("train", 1)).write_bytes(record)
    with pytest.raises(NotAStoreError, match=match):
        ia.open(tmp_path / "s")


def test_segments_that_do_not_follow_one_another_are_refused(tmp_path: Path) -> None:
    grown(tmp_path / "s")
    store = InfluenceStore.open(tmp_path / "s")
    write_segment(store.matrix.zarr_store, Segment("train", 2, 20, 25, None, "t"))
    with pytest.raises(NotAStoreError, match="do not follow one another"):
        ia.open(tmp_path / "s")


def test_segment_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="non-empty range"):
        Segment("train", 1, 5, 5, None, "t")
    with pytest.raises(ValueError, match="side 'test' or 'train'"):
        Segment("rows", 1, 0, 5, None, "t")
