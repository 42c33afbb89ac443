"""Damage never goes unnoticed: corrupt blocks, damaged metadata, a full disk, read-only stores.

A corrupt block raises an error naming it and ``repair()`` recomputes it; ``verify()`` lists
exactly the corrupt blocks; damaged metadata is a clear error to catch; failed writes (a full
disk, a read-only store) say what failed and change nothing.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults import (
    BLOCK,
    EXPECTED,
    GRID,
    N_BLOCKS,
    SHAPE,
    block_of,
    chunk_files,
    new_store,
    partial_files,
    refill_computes_exactly,
    snapshot,
)
from helpers import CountingFn
from zarr.storage import LocalStore

import infl_array as ia


# ---------------------------------------------------------------------- corruption
def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flip-one-bit": _flip,
    "truncate-half": lambda b: b[: len(b) // 2],
    "truncate-empty": lambda b: b"",
    "garbage-same-length": lambda b: bytes(random.Random(1).randbytes(len(b))),
    "garbage-short": lambda b: b"\x00garbage",
    "garbage-long": lambda b: b + os.urandom(64),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupt_block_raises_naming_it_and_repair_recomputes_it(
    tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "store"
    new_store(store).fill(progress=False)
    path = store / "influence" / "c" / "3" / "2"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    ro = ia.open(store)
    reads: list[Callable[[], object]] = [
        lambda: ro[15:20, 12:18],
        lambda: ro[16, 13],
        lambda: ro[[0, 17], [0, 14]],
        lambda: ro.oindex[[17], [14, 35]],
        lambda: np.asarray(ro),
        lambda: ro.sum(),
        lambda: ro.top_k(2),
        lambda: ro.to_dask().compute(),
    ]
    for read in reads:
        with pytest.raises(ia.CorruptBlockError, match=r"block \(3, 2\).*repair") as info:
            read()
        assert info.value.block_coords == (3, 2)
    np.testing.assert_array_equal(ro[:15], EXPECTED[:15])  # other blocks read fine
    assert ro.verify() == [(3, 2)]
    fn = CountingFn(EXPECTED)
    assert ia.open(store, fn=fn).repair() == [(3, 2)]
    assert [block_of(c) for c in fn.calls] == [(3, 2)]
    assert ro.verify() == []
    np.testing.assert_array_equal(np.asarray(ro), EXPECTED)


def test_verify_lists_exactly_the_corrupt_blocks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    new_store(store).fill(progress=False)
    bad = {(0, 0): "flip-one-bit", (4, 5): "truncate-empty", (7, 5): "garbage-short",
           (7, 0): "truncate-half"}  # fmt: skip
    for (i, j), damage in bad.items():
        path = store / "influence" / "c" / str(i) / str(j)
        path.write_bytes(DAMAGE[damage](path.read_bytes()))
    fn = CountingFn(EXPECTED)
    arr = ia.open(store, fn=fn)
    assert arr.verify() == sorted(bad)
    assert arr.repair() == sorted(bad)
    assert sorted(block_of(c) for c in fn.calls) == sorted(bad)
    assert arr.verify() == [] and arr.repair() == []
    np.testing.assert_array_equal(np.asarray(arr), EXPECTED)


def _rewrite_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _set_chunks(doc: dict[str, Any]) -> None:
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [4, 6]


def _set_dtype(doc: dict[str, Any]) -> None:
    doc["data_type"] = "float64"


def _drop_attrs(doc: dict[str, Any]) -> None:
    del doc["attributes"]["infl_array"]


def _attrs_not_a_mapping(doc: dict[str, Any]) -> None:
    doc["attributes"]["infl_array"] = [1, 2]


def _huge_format(doc: dict[str, Any]) -> None:
    doc["attributes"]["infl_array"]["format_version"] = 99


METADATA_DAMAGE: list[tuple[str, Callable[[Path], object], str]] = [
    ("group-json-deleted", lambda s: (s / "zarr.json").unlink(), "no zarr group"),
    ("group-json-invalid", lambda s: (s / "zarr.json").write_text("{not json"), "damaged"),
    ("group-json-empty", lambda s: (s / "zarr.json").write_text(""), "damaged"),
    ("group-json-a-list", lambda s: (s / "zarr.json").write_text("[]"), "damaged"),
    ("group-attrs-gone", lambda s: _rewrite_json(s / "zarr.json", _drop_attrs), "not an infl"),
    ("group-attrs-list", lambda s: _rewrite_json(s / "zarr.json", _attrs_not_a_mapping),
     "damaged"),
    ("newer-format", lambda s: _rewrite_json(s / "zarr.json", _huge_format), "upgrade"),
    ("array-json-deleted", lambda s: (s / "influence" / "zarr.json").unlink(), "lacks its array"),
    ("array-json-invalid", lambda s: (s / "influence" / "zarr.json").write_text("{"), "damaged"),
    ("array-json-empty", lambda s: (s / "influence" / "zarr.json").write_text(""), "damaged"),
    ("array-chunks-changed", lambda s: _rewrite_json(s / "influence" / "zarr.json", _set_chunks),
     "chunks"),
    ("array-dtype-changed", lambda s: _rewrite_json(s / "influence" / "zarr.json", _set_dtype),
     "dtype"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "match"),
    [(d, m) for _, d, m in METADATA_DAMAGE],
    ids=[name for name, _, _ in METADATA_DAMAGE],
)
def test_damaged_metadata_is_a_clear_catchable_error(
    tmp_path: Path, damage: Callable[[Path], object], match: str
) -> None:
    store = tmp_path / "store"
    new_store(store)[:10, :12]
    damage(store)
    before = snapshot(store)
    fn = CountingFn(EXPECTED)
    for opener in (lambda: ia.open(store), lambda: ia.open(store, fn=fn)):
        with pytest.raises(ia.NotAStoreError, match=match) as info:
            opener()
        text = str(info.value)
        assert repr(str(store)) in text
        assert any(fix in text for fix in ("overwrite=True", "create", "upgrade", "Create"))
    assert fn.calls == [] and snapshot(store) == before


def test_store_without_its_chunk_directory_is_empty_not_broken(tmp_path: Path) -> None:
    store = tmp_path / "store"
    new_store(store).fill(progress=False)
    for p in chunk_files(store):
        p.unlink()
    ro = ia.open(store)
    assert not ro.computed.any() and ro.verify() == []
    refill_computes_exactly(store, set(np.ndindex(GRID)))


# ---------------------------------------------------------------------- full disk, read-only
class FailingStore(LocalStore):
    """A local store whose block writes raise ``error`` (when set): a full disk, no access."""

    error: OSError | None = None

    async def set(self, key: str, value: Any) -> None:
        if self.error is not None and "/c/" in key:
            raise self.error
        await super().set(key, value)


FAILURES = [
    (OSError(errno.ENOSPC, "No space left on device"), OSError, "free disk space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), OSError, "fix the storage problem"),
    (PermissionError(errno.EACCES, "Permission denied"), PermissionError, "make the store writ"),
    (PermissionError("read-only file system"), PermissionError, "make the store writable"),
]


@pytest.mark.parametrize(("error", "kind", "fix"), FAILURES, ids=lambda v: repr(v)[:30])
def test_failed_writes_are_clear_and_change_nothing(
    tmp_path: Path, error: OSError, kind: type[OSError], fix: str
) -> None:
    path = tmp_path / "store"
    store = FailingStore(path)
    fn = CountingFn(EXPECTED)
    arr = ia.InfluenceArray.from_function(store, fn, shape=SHAPE, block_shape=BLOCK)
    arr[:10]  # block rows 0 and 1 stored
    before = snapshot(path)
    computed = arr.computed.copy()
    store.error = error
    attempts = [((2, 1), lambda: arr[10:12, 7]), ((2, 0), lambda: arr.fill(progress=False))]
    for (i, j), attempt in attempts:
        with pytest.raises(OSError, match=rf"block \({i}, {j}\).*{fix}.*fill\(\)") as info:
            attempt()
        assert type(info.value) is kind and info.value.errno == error.errno
        assert info.value.__cause__ is error
        assert snapshot(path) == before and partial_files(path) == []
        np.testing.assert_array_equal(arr.computed, computed)
        np.testing.assert_array_equal(ia.open(path)[:10], EXPECTED[:10])
    store.error = None
    assert arr.fill(progress=False) == N_BLOCKS - 2 * GRID[1]
    np.testing.assert_array_equal(np.asarray(arr), EXPECTED)


def test_disk_full_in_the_middle_of_a_write_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    arr = new_store(store)
    arr[:5]
    before = snapshot(store)
    real_open = pathlib.Path.open

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: Any) -> int:
            data = bytes(memoryview(data))
            self.f.write(data[: len(data) // 3])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, mode, *args, **kwargs)
        return FullDisk(f) if self.name.endswith(".partial") else f

    monkeypatch.setattr(pathlib.Path, "open", full_open)
    with pytest.raises(OSError, match=r"block \(1, 0\).*No space left.*free disk space") as info:
        arr.fill(progress=False)
    assert info.value.errno == errno.ENOSPC
    assert snapshot(store) == before and partial_files(store) == []
    monkeypatch.undo()
    refill_computes_exactly(store, set(np.ndindex(GRID)) - {(0, j) for j in range(GRID[1])})


def test_read_only_zarr_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    new_store(path)[:5]
    before = snapshot(path)
    fn = CountingFn(EXPECTED)
    ro_store = LocalStore(path, read_only=True)
    arr = ia.open(ro_store, fn=fn)
    np.testing.assert_array_equal(arr[:5], EXPECTED[:5])
    with pytest.raises(PermissionError, match=r"read-only.*Nothing was written"):
        arr.fill(progress=False)
    assert fn.calls == []  # refused before computing anything
    with pytest.raises(PermissionError, match=r"block \(1, 0\).*read-only"):
        arr[5, 0]
    np.testing.assert_array_equal(ia.open(ro_store)[:5], EXPECTED[:5])
    assert snapshot(path) == before
    with pytest.raises(PermissionError, match="read-only"):
        ia.InfluenceArray.from_function(
            LocalStore(tmp_path / "new", read_only=True), fn, shape=SHAPE, block_shape=BLOCK
        )
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


class FullForNewArrays(LocalStore):
    """A local store whose writes outside the matrix raise ``ENOSPC`` (when ``full``)."""

    full = False

    async def set(self, key: str, value: Any) -> None:
        if self.full and not key.startswith("influence/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().set(key, value)


def test_a_full_disk_while_creating_a_top_k_array_names_it_and_the_fix(tmp_path: Path) -> None:
    store = FullForNewArrays(tmp_path / "store")
    arr = ia.InfluenceArray.from_function(
        store, CountingFn(EXPECTED), shape=SHAPE, block_shape=BLOCK
    )
    arr.fill(progress=False)
    FullForNewArrays.full = True
    try:
        with pytest.raises(OSError, match=r"create the array 'topk/.*free disk space") as info:
            arr.top_k_array(2, axis=1)
        assert info.value.errno == errno.ENOSPC
    finally:
        FullForNewArrays.full = False
    np.testing.assert_array_equal(arr.top_k_array(2, axis=1).values[:, 0], EXPECTED.max(axis=1))
