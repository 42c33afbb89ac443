"""Bad input is refused before any work: paths that are not stores, bad blocks, bad keys,
materialising too much, and a model or data that no longer match the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faultchild
import numpy as np
import pytest
import zarr
from faults import (
    BLOCK,
    EXPECTED,
    GRID,
    SHAPE,
    check_store_after_crash,
    new_store,
    partial_files,
    refill_computes_exactly,
    snapshot,
)
from helpers import CountingFn

import infl_array as ia


def test_paths_that_are_not_stores_are_left_alone(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("precious")
    foreign_zarr = tmp_path / "foreign"
    zarr.open_group(foreign_zarr, mode="w").create_array("x", shape=(2,), dtype="f4")[:] = 1.0
    program_dir = tmp_path / "program"
    (program_dir / "sub").mkdir(parents=True)
    (program_dir / "sub" / "data.bin").write_bytes(b"\x00\x01")
    for target in (a_file, foreign_zarr, program_dir):
        before = snapshot(tmp_path)
        fn = CountingFn(EXPECTED)
        for overwrite in (False, True):
            with pytest.raises((ia.NotAStoreError, FileExistsError), match="not an infl_array"):
                ia.InfluenceArray.from_function(
                    target, fn, shape=SHAPE, block_shape=BLOCK, overwrite=overwrite
                )
        no_fn: dict[str, Any] = {}
        for kwargs in (no_fn, {"fn": fn}):
            with pytest.raises(ia.NotAStoreError, match="not an infl_array store"):
                ia.open(target, **kwargs)
        assert fn.calls == [] and snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        (np.zeros((5, 5)), ia.BlockFunctionError, r"shape \(5, 5\); expected \(5, 6\)"),
        (np.full((5, 6), np.nan), ia.BlockFunctionError, "non-finite"),
        (np.full((5, 6), -np.inf), ia.BlockFunctionError, "non-finite"),
        (np.zeros((5, 6), dtype=np.complex64), ia.BlockFunctionError, "dtype"),
        (RuntimeError("CUDA out of memory"), RuntimeError, "CUDA out of memory"),
    ],
    ids=["shape", "nan", "inf", "complex", "raises"],
)
def test_bad_block_in_the_middle_of_a_fill(
    tmp_path: Path, result: Any, error: type[Exception], match: str
) -> None:
    store = tmp_path / "store"
    new_store(store)

    def fn(rows: range, cols: range) -> Any:
        if (rows.start, cols.start) == (10, 18):  # block (2, 3)
            if isinstance(result, Exception):
                raise result
            return result
        return faultchild.values(rows, cols)

    arr = ia.open(store, fn=fn)
    with pytest.raises(error, match=match) as info:
        arr.fill(progress=False)
    if isinstance(info.value, ia.BlockFunctionError):
        assert info.value.block_coords == (2, 3)
    notes = getattr(info.value, "__notes__", [])
    assert "(2, 3)" in str(info.value) + " ".join(notes)
    # row-major: 15 blocks before it are stored, it and the rest are not
    missing = check_store_after_crash(store)
    assert sorted(missing) == [b for b in np.ndindex(GRID) if b >= (2, 3)]
    assert partial_files(store) == []
    refill_computes_exactly(store, missing)


_F = np.zeros(SHAPE, dtype=np.float32)
BAD_KEYS: list[Any] = [
    40, -41, (0, 36), (0, -37), (0, 0, 0), (..., ...), (None, 0, 0, 0), 1.0, (0, 1.5), "a",
    [0, 40], ([0, 1], [1, 2, 3]), np.ones(39, dtype=bool), np.ones((40, 35), dtype=bool),
    (slice(None), np.ones(37, dtype=bool)), np.array([0.5]), (slice(None, None, 0),),
    slice(0.5, 2), [[0, 1], [2]], object(), {0: 1}, (np.array([[0, 40]]), 0),
]  # fmt: skip
BAD_OINDEX_KEYS: list[tuple[Any, type[Exception]]] = [
    ((40,), IndexError), ((0, 36), IndexError), (([0, 40],), IndexError),
    (([0], [-37]), IndexError), (([[0]],), IndexError), ((np.ones(39, dtype=bool),), IndexError),
    ((0, 0, 0), IndexError), ((1.5,), IndexError), ((None,), IndexError), ("a", IndexError),
    (([1.0],), IndexError), ((slice(None, None, 0),), ValueError), ((slice(0.5, 2),), TypeError),
]  # fmt: skip


def _numpy_error(key: Any) -> type[Exception]:
    try:
        _F[key]
    except Exception as exc:
        return type(exc)
    raise AssertionError(f"numpy accepts {key!r}")


def _keyed_cases() -> Iterator[Any]:
    for key in BAD_KEYS:
        yield pytest.param("getitem", key, _numpy_error(key), id=f"arr[{key!r}]"[:40])
    for key, exc in BAD_OINDEX_KEYS:
        yield pytest.param("oindex", key, exc, id=f"oindex[{key!r}]"[:40])


@pytest.fixture(scope="module")
def keyed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("keys") / "store"
    new_store(store)[:5, :6]
    return store


@pytest.mark.parametrize(("how", "key", "error"), list(_keyed_cases()))
def test_bad_keys_compute_nothing(
    keyed_store: Path, how: str, key: Any, error: type[Exception]
) -> None:
    before = snapshot(keyed_store)
    fn = CountingFn(EXPECTED)
    arr = ia.open(keyed_store, fn=fn)
    with pytest.raises(error):
        if how == "getitem":
            arr[key]
        else:
            arr.oindex[key]
    assert fn.calls == [] and snapshot(keyed_store) == before


def test_materialising_too_much_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    fn = CountingFn(EXPECTED)
    arr = ia.InfluenceArray.from_function(store, fn, shape=SHAPE, block_shape=BLOCK)
    before = snapshot(store)
    arr.materialize_limit_bytes = arr.nbytes - 1
    with pytest.raises(MemoryError) as info:
        np.asarray(arr)
    text = str(info.value)
    for hint in ("arr[rows, cols]", "top_k", "to_dask", "materialize_limit_bytes", "40 x 36"):
        assert hint in text
    assert fn.calls == [] and snapshot(store) == before
    arr.materialize_limit_bytes = arr.nbytes
    np.testing.assert_array_equal(np.asarray(arr), EXPECTED)


# an untrained network: H + 0.1*Id is indefinite (solved exactly all the same)
@pytest.mark.filterwarnings("ignore::infl_array.torch.IndefiniteHessianWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_changed_model_or_data_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from models import binary_data, tanh_mlp

    from infl_array.torch import DirectInfluence

    ce = torch.nn.functional.cross_entropy

    def data(n: int, seed: int) -> tuple[Any, Any]:
        return binary_data(n, 3, seed)

    def fitted(seed: int, train: Any, reg: float = 0.1) -> Any:
        net = tanh_mlp(3, 4, 2, seed=seed, double=False)
        return DirectInfluence(net, ce, regularization=reg).fit(train)

    train, test = data(20, 0), data(7, 1)
    store = tmp_path / "store"
    arr = ia.InfluenceArray.create(
        store, fitted(0, train), test=test, train=train, block_shape=(4, 8)
    )
    arr[:4, :8]
    before = snapshot(store)
    cases = [
        (fitted(1, train), test, train, ["model"]),
        (fitted(0, train, reg=0.5), test, train, ["backend"]),
        (fitted(0, train), data(7, 9), train, ["test"]),
        (fitted(0, train), test, data(20, 5), ["train"]),
    ]
    for model, te, tr, differ in cases:
        with pytest.raises(ia.StaleCacheError, match=differ[0]) as info:
            ia.open(store, model, test=te, train=tr)
        assert set(differ) <= set(info.value.differences)
        assert snapshot(store) == before
    # an equal model in a new object, on equal data, is the same store
    same = ia.open(store, fitted(0, data(20, 0)), test=data(7, 1), train=data(20, 0))
    np.testing.assert_array_equal(same[:4, :8], arr[:4, :8])
    assert snapshot(store) == before
