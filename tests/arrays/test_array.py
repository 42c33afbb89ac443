"""InfluenceArray over a block function: laziness, caching, store layout, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import CountingFn, block_fn_module_level, influence_like

import infl_array as ia


@pytest.fixture
def full() -> np.ndarray:
    return influence_like((23, 17), seed=1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def make(store: Path, full: np.ndarray, block_shape: tuple[int, int] = (5, 4), **kw: object):
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(
        store, fn, shape=full.shape, block_shape=block_shape, **kw
    )
    return arr, fn


# ---------------------------------------------------------------------- laziness and caching
def test_read_computes_exactly_the_touched_missing_blocks(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    np.testing.assert_array_equal(arr[6:11, 3:9], full[6:11, 3:9])
    # rows 6..10 -> blocks 1, 2; cols 3..8 -> blocks 0, 1, 2
    assert sorted(fn.calls) == sorted(
        (r * 5, min(r * 5 + 5, 23), c * 4, min(c * 4 + 4, 17)) for r in (1, 2) for c in (0, 1, 2)
    )
    fn.calls.clear()
    np.testing.assert_array_equal(arr[6:11, 3:9], full[6:11, 3:9])
    assert fn.calls == []
    # overlapping read: only the new blocks, each once
    np.testing.assert_array_equal(arr[9:12, 7:13], full[9:12, 7:13])
    assert sorted(fn.calls) == [(5, 10, 12, 16), (10, 15, 12, 16)]


def test_pointwise_read_touches_only_the_points_blocks(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    out = arr[[0, 22], [0, 16]]
    np.testing.assert_array_equal(out, full[[0, 22], [0, 16]])
    assert sorted(fn.calls) == [(0, 5, 0, 4), (20, 23, 16, 17)]


def test_step_slice_skips_blocks_it_does_not_touch(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full, block_shape=(2, 17))
    np.testing.assert_array_equal(arr[::10], full[::10])
    assert sorted(c[0] for c in fn.calls) == [0, 10, 20]


def test_reopen_in_a_fresh_process_computes_nothing(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    arr.fill(progress=False)
    assert len(fn.calls) == arr.grid_shape[0] * arr.grid_shape[1]
    np.save(store.parent / "full.npy", full)
    script = textwrap.dedent(
        f"""
        import numpy as np, infl_array as ia
        full = np.load({str(store.parent / "full.npy")!r})
        calls = []
        def fn(rows, cols):
            calls.append((rows, cols))
            return full[rows.start:rows.stop, cols.start:cols.stop]
        arr = ia.open({str(store)!r}, fn=fn)
        ok = np.array_equal(np.asarray(arr), full)
        ok = ok and np.array_equal(arr[::-2, [3, 1]], full[::-2, [3, 1]])
        ro = ia.open({str(store)!r})
        ok = ok and np.array_equal(ro[:, :], full)
        print(len(calls), ok)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "True"]


def test_fill_computes_only_missing_and_reports_count(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    arr[0, 0]
    assert arr.fill(progress=False) == arr.grid_shape[0] * arr.grid_shape[1] - 1
    assert arr.computed.all()
    fn.calls.clear()
    assert arr.fill(progress=False) == 0
    assert fn.calls == []
    np.testing.assert_array_equal(np.asarray(arr), full)


def test_fill_with_process_workers(store: Path) -> None:
    shape = (13, 11)
    arr = ia.InfluenceArray.from_function(
        store, block_fn_module_level, shape=shape, block_shape=(3, 4)
    )
    assert arr.fill(progress=False, workers=2) == 5 * 3
    expected = block_fn_module_level(range(13), range(11))
    np.testing.assert_array_equal(ia.open(store)[:, :], expected)


def test_fill_with_dask_client(store: Path) -> None:
    distributed = pytest.importorskip("distributed")
    arr = ia.InfluenceArray.from_function(
        store, block_fn_module_level, shape=(9, 10), block_shape=(4, 4)
    )
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ) as client:
        assert arr.fill(progress=False, client=client) == 9
    np.testing.assert_array_equal(ia.open(store)[:, :], block_fn_module_level(range(9), range(10)))


# ---------------------------------------------------------------------- values and blocks
def test_all_zero_blocks_count_as_computed(store: Path) -> None:
    full = np.zeros((6, 6), dtype=np.float32)
    arr, fn = make(store, full, block_shape=(3, 3))
    arr.fill(progress=False)
    assert arr.computed.all()
    reopened = ia.open(store)
    assert reopened.computed.all()
    np.testing.assert_array_equal(reopened[:, :], full)
    arr2 = ia.open(store, fn=fn)
    fn.calls.clear()
    arr2[:, :]
    assert fn.calls == []


@pytest.mark.parametrize("block_shape", [(1, 1), (7, 3), (23, 17), (50, 50), (4, 100)])
def test_values_do_not_depend_on_block_shape(
    tmp_path: Path, full: np.ndarray, block_shape: tuple[int, int]
) -> None:
    arr, _ = make(tmp_path / "s", full, block_shape=block_shape)
    np.testing.assert_array_equal(np.asarray(arr), full)
    np.testing.assert_array_equal(arr[::-3, 1::5], full[::-3, 1::5])


def test_ragged_last_blocks(store: Path) -> None:
    full = influence_like((10, 7))
    arr, fn = make(store, full, block_shape=(4, 3))
    assert arr.grid_shape == (3, 3)
    np.testing.assert_array_equal(arr[8:, 6:], full[8:, 6:])
    assert fn.calls == [(8, 10, 6, 7)]
    np.testing.assert_array_equal(arr[-1], full[-1])


def test_float64_and_scalars(store: Path) -> None:
    full = influence_like((5, 6), dtype="float64")
    arr, _ = make(store, full, dtype="float64")
    value = arr[1, -2]
    assert isinstance(value, np.float64) and value == full[1, -2]
    assert arr.dtype == np.float64 and arr[:2].dtype == np.float64


def test_array_attributes(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    assert arr.shape == (23, 17) and arr.ndim == 2 and arr.size == 23 * 17 and len(arr) == 23
    assert arr.block_shape == (5, 4) and arr.grid_shape == (5, 5)
    assert arr.nbytes == 23 * 17 * 4 and arr.dtype == np.float32
    assert arr.computed.shape == (5, 5) and not arr.computed.any()


def test_oindex(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    np.testing.assert_array_equal(arr.oindex[[3, 1, 3], [0, 16]], full[np.ix_([3, 1, 3], [0, 16])])
    np.testing.assert_array_equal(arr.oindex[2, ::-4], full[2, ::-4])


def test_array_protocol(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    np.testing.assert_array_equal(np.asarray(arr), full)
    assert np.asarray(arr, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(np.array(arr, copy=True), full)
    with pytest.raises(ValueError, match="copy=False"):
        arr.__array__(copy=False)
    arr.materialize_limit_bytes = 100
    with pytest.raises(MemoryError, match="top_k"):
        np.asarray(arr)


def test_read_only(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    with pytest.raises(TypeError, match="read-only"):
        arr[0, 0] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        arr.oindex[0, 0] = 1.0


def test_store_is_plain_zarr(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    arr[:7, :5]
    group = zarr.open_group(store, mode="r")
    z = group["influence"]
    assert isinstance(z, zarr.Array)
    assert z.metadata.dimension_names == ("test", "train")
    assert z.chunks == (5, 4) and z.shape == full.shape
    np.testing.assert_array_equal(z[:5, :4], full[:5, :4])
    assert np.isnan(z[22, 16])  # never computed: the fill value
    attrs = group.attrs["infl_array"]
    assert attrs["shape"] == [23, 17] and attrs["block_shape"] == [5, 4]
    assert attrs["dtype"] == "float32" and attrs["format_version"] == 1
    assert attrs["computed_by"]["kind"] == "function"
    assert attrs["library_version"] == ia.__version__
    json.dumps(attrs)


def test_temporary_files_are_not_blocks(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    chunk_dir = store / "influence" / "c" / "0"
    chunk_dir.mkdir(parents=True)
    (chunk_dir / "0.1234abcd.partial").write_bytes(b"half a block")
    assert not arr.computed.any()
    np.testing.assert_array_equal(arr[0, 0], full[0, 0])
    assert fn.calls == [(0, 5, 0, 4)]


def test_lossy_compression_bounds_relative_error(store: Path, full: np.ndarray) -> None:
    comp = ia.Compression(keepbits=10)
    arr, _ = make(store, full, compression=comp)
    got = np.asarray(arr)
    rel = np.abs(got - full) / np.abs(full)
    assert rel.max() <= comp.relative_error_bound
    assert rel.max() > 0  # it is lossy
    assert ia.open(store).meta.compression.keepbits == 10


def test_repr_tells_the_state(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    arr[0]
    text = repr(arr)
    for part in ("shape=(23, 17)", "block_shape=(5, 4)", "5/25", "compression ratio", "CountingFn"):
        assert part in text


# ---------------------------------------------------------------------- integrity
def test_verify_and_repair_find_a_flipped_byte(store: Path, full: np.ndarray) -> None:
    arr, fn = make(store, full)
    arr.fill(progress=False)
    path = store / "influence" / "c" / "1" / "2"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    ro = ia.open(store)
    assert ro.verify() == [(1, 2)]
    with pytest.raises(ia.CorruptBlockError, match=r"\(1, 2\)"):
        ro[5:10, 8:12]
    with pytest.raises(ValueError, match="repair"):
        ro.repair()
    fn.calls.clear()
    assert arr.repair() == [(1, 2)]
    assert fn.calls == [(5, 10, 8, 12)]
    assert ro.verify() == []
    np.testing.assert_array_equal(ro[:, :], full)


# ---------------------------------------------------------------------- errors
def test_create_over_existing_store_raises_before_computing(store: Path, full: np.ndarray) -> None:
    make(store, full)
    fn = CountingFn(full)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ia.InfluenceArray.from_function(store, fn, shape=full.shape, block_shape=(5, 4))
    assert fn.calls == []
    arr = ia.InfluenceArray.from_function(
        store, fn, shape=(3, 3), block_shape=(2, 2), overwrite=True
    )
    assert arr.shape == (3, 3) and not arr.computed.any()


def test_overwrite_refuses_foreign_directory(tmp_path: Path, full: np.ndarray) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an infl_array store"):
        ia.InfluenceArray.from_function(
            tmp_path, CountingFn(full), shape=full.shape, overwrite=True
        )
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_read_only_store_raises_missing_block(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    arr[0:5, 0:4]
    ro = ia.open(store)
    np.testing.assert_array_equal(ro[0:5, 0:4], full[0:5, 0:4])
    with pytest.raises(ia.MissingBlockError, match=r"block \(0, 1\).*fn=") as info:
        ro[0, 5]
    assert isinstance(info.value, LookupError) and info.value.block_coords == (0, 1)
    with pytest.raises(ValueError, match="fill"):
        ro.fill(progress=False)


@pytest.mark.parametrize(
    ("shape", "block_shape", "error", "match"),
    [
        ((0, 5), (2, 2), ValueError, "positive"),
        ((5, 0), (2, 2), ValueError, "positive"),
        ((5, 5), (0, 2), ValueError, "positive"),
        ((5, 5), (2, -1), ValueError, "positive"),
        ((5, 5), (2,), TypeError, "pair"),
        ((5, 5), 2, TypeError, "pair"),
        ((5, 5), (2.0, 2), TypeError, "pair"),
        ((5,), (2, 2), TypeError, "pair"),
    ],
)
def test_bad_shapes(
    store: Path, shape: object, block_shape: object, error: type, match: str
) -> None:
    fn = CountingFn(np.zeros((5, 5)))
    with pytest.raises(error, match=match):
        ia.InfluenceArray.from_function(store, fn, shape=shape, block_shape=block_shape)  # type: ignore[arg-type]
    assert not store.exists() or not any(store.iterdir())


def test_bad_dtype(store: Path) -> None:
    with pytest.raises(TypeError, match="float32"):
        ia.InfluenceArray.from_function(store, block_fn_module_level, shape=(2, 2), dtype="int8")


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (np.zeros((2, 3)), "shape"),
        (np.full((5, 4), np.nan), "non-finite"),
        (np.full((5, 4), np.inf), "non-finite"),
        (np.zeros((5, 4), dtype=complex), "dtype"),
        (np.zeros((5, 4), dtype=bool), "dtype"),
        (np.full((5, 4), 1e300), "non-finite"),  # overflows float32
        ("not an array", "shape"),
    ],
)
def test_bad_block_function_results_store_nothing(store: Path, result: object, match: str) -> None:
    arr = ia.InfluenceArray.from_function(
        store, lambda rows, cols: result, shape=(10, 8), block_shape=(5, 4)
    )
    with pytest.raises(ia.BlockFunctionError, match=match) as info:
        arr[0, 0]
    assert info.value.block_coords == (0, 0) and "(0, 0)" in str(info.value)
    assert not arr.computed.any()


def test_block_function_exception_propagates_and_stores_nothing(store: Path) -> None:
    def boom(rows: range, cols: range) -> np.ndarray:
        raise RuntimeError("out of GPU memory")

    arr = ia.InfluenceArray.from_function(store, boom, shape=(4, 4), block_shape=(2, 2))
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        arr[3, 3]
    assert not arr.computed.any()


def test_open_errors(tmp_path: Path, full: np.ndarray) -> None:
    with pytest.raises(FileNotFoundError, match="create"):
        ia.open(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ia.NotAStoreError, match="is a file"):
        ia.open(tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("a,b")
    with pytest.raises(ia.NotAStoreError, match="not an infl_array store"):
        ia.open(tmp_path / "other")
    zarr.open_group(tmp_path / "foreign", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(ia.NotAStoreError, match="not an infl_array store"):
        ia.open(tmp_path / "foreign")


def test_open_with_different_settings_is_stale(store: Path, full: np.ndarray) -> None:
    make(store, full)
    with pytest.raises(ia.StaleCacheError, match="block_shape") as info:
        ia.open(store, fn=CountingFn(full), block_shape=(4, 4))
    assert info.value.differences == ["block_shape"]
    with pytest.raises(ia.StaleCacheError, match="dtype"):
        ia.open(store, dtype="float64")
    assert ia.open(store, block_shape=(5, 4), dtype="float32").shape == full.shape


def test_damaged_metadata_is_a_clear_error(store: Path, full: np.ndarray) -> None:
    make(store, full)
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["infl_array"]["shape"]
    meta.write_text(json.dumps(doc))
    with pytest.raises(ia.NotAStoreError, match="damaged"):
        ia.open(store)
    meta.write_text("{not json")
    with pytest.raises(ia.NotAStoreError):
        ia.open(store)


def test_fsspec_memory_url(full: np.ndarray) -> None:
    fn = CountingFn(full)
    url = "memory://infl-test-store"
    arr = ia.InfluenceArray.from_function(url, fn, shape=full.shape, block_shape=(5, 4))
    np.testing.assert_array_equal(arr[3:9, ::-1], full[3:9, ::-1])
    ro = ia.open(url)
    assert int(ro.computed.sum()) == 2 * 5
    np.testing.assert_array_equal(ro[3:9], full[3:9])


@pytest.mark.parametrize("spec", [{}, "memory://infl-local-only"])
def test_process_workers_refuse_an_in_process_store(spec: object, full: np.ndarray) -> None:
    arr = ia.InfluenceArray.from_function(spec, block_fn_module_level, shape=(4, 4))
    with pytest.raises(TypeError, match="in-process store"):
        arr.fill(progress=False, workers=2)
    assert not arr.computed.any()


def test_small_repeated_reads_come_from_the_block_cache(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full)
    first = arr[7, 3:9]
    cache = arr.block_cache
    misses = cache.misses
    np.testing.assert_array_equal(arr[7, 3:9], first)
    np.testing.assert_array_equal(arr[[5, 9], 4], full[[5, 9], 4])
    assert cache.misses == misses  # computed blocks were cached as they were written
    cache.clear()
    np.testing.assert_array_equal(arr[7, 3:9], first)
    assert cache.misses == misses + 3  # blocks (1, 0), (1, 1), (1, 2) decoded once each
    np.testing.assert_array_equal(arr[7, 3:9], first)
    assert cache.misses == misses + 3
    cache.max_bytes = 0  # off: reads go to zarr, the cache is not consulted
    hits = cache.hits
    np.testing.assert_array_equal(arr[7, 3:9], first)
    assert (cache.hits, cache.misses) == (hits, misses + 3)


def test_block_cache_is_bounded(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full, block_shape=(5, 4))
    arr.block_cache.max_bytes = 3 * 5 * 4 * 4  # three float32 blocks
    np.asarray(arr)
    arr[:, 0]
    assert arr.block_cache.nbytes <= arr.block_cache.max_bytes


def test_lossy_store_reads_the_same_values_first_and_later(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full, compression=ia.Compression(keepbits=6))
    first = arr[2, :]
    with warnings.catch_warnings():  # plain zarr warns that BitRound is outside the v3 spec
        warnings.simplefilter("ignore")
        stored = zarr.open_array(store / "influence", mode="r")[2, :]
    np.testing.assert_array_equal(first, stored)
    np.testing.assert_array_equal(arr[2, :], stored)
    assert not np.array_equal(first, full[2, :])


def test_compression_choices(store: Path, full: np.ndarray) -> None:
    arr, _ = make(store, full, compression=ia.Compression(cname="zstd", clevel=3))
    np.testing.assert_array_equal(np.asarray(arr), full)
    assert ia.open(store).meta.compression.cname == "zstd"
    with pytest.raises(ValueError, match="cname"):
        ia.Compression(cname="brotli")  # type: ignore[arg-type]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_values_of_the_callers_memory_are_copied_not_kept(tmp_path: Path, as_tensor: bool) -> None:
    # fn returns views of the caller's own array (a tensor shares it too); the caller changes
    # it later: reads keep giving the stored values, and the caller's array stays writable
    import torch

    mine = np.arange(40, dtype=np.float32).reshape(4, 10)

    def fn(rows: range, cols: range) -> object:
        view = mine[rows.start : rows.stop]  # all columns: a contiguous view, no copy
        return torch.from_numpy(view) if as_tensor else view

    arr = ia.InfluenceArray.from_function(tmp_path / "s", fn, shape=(4, 10), block_shape=(2, 10))
    first = arr[:]
    mine[:] = -1.0  # the caller reuses its buffer
    np.testing.assert_array_equal(arr[:], first)
    np.testing.assert_array_equal(ia.open(tmp_path / "s")[:], first)
    assert first[0, 1] == 1.0 and mine.flags.writeable
