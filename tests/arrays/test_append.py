"""``arr.append_train`` / ``arr.append_test``: the matrix, its factors and its top-k arrays grow;
only what is new is computed; segments are recorded, checked at open and shown."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from helpers import FeatureFactors, brute_top_k, integer_data

import infl_array as ia
from infl_array.cli import main
from infl_array.errors import NotAStoreError
from infl_array.storage import growth, layout
from infl_array.storage.growth import AxisGrowth, grow_store
from infl_array.storage.segments import Segment
from infl_array.storage.store import InfluenceStore

BLOCK = (3, 4)


def joined(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Any, Any]:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


def filled(path: Path, n_test: int, n_train: int) -> tuple[ia.InfluenceArray, dict[str, Any]]:
    """A filled store of ``x_test @ x_train.T`` with its data, and two top-k arrays filled."""
    test, train = integer_data(n_test, 3, 0), integer_data(n_train, 3, 1)
    arr = ia.InfluenceArray.create(
        path, FeatureFactors(), test=test, train=train, block_shape=BLOCK
    )
    arr.fill(progress=False)
    arr.top_k_array(3, axis=1).fill(progress=False)
    arr.top_k_array(2, axis=0, largest=False).fill(progress=False)
    return arr, {"test": test, "train": train}


def check_top_k(arr: ia.InfluenceArray, full: np.ndarray) -> None:
    for k, axis, largest in ((3, 1, True), (2, 0, False)):
        tk = arr.top_k_array(k, axis=axis, largest=largest)
        values, indices = brute_top_k(full, k, axis, largest)
        values, indices = (values, indices) if axis == 1 else (values.T, indices.T)
        np.testing.assert_array_equal(tk.indices[:], indices)
        np.testing.assert_array_equal(tk.values[:], values)


@pytest.mark.parametrize(("n_train", "n_new"), [(8, 8), (10, 6), (10, 1)])
def test_append_train_computes_only_the_new_blocks(
    tmp_path: Path, n_train: int, n_new: int
) -> None:
    arr, data = filled(tmp_path / "s", 7, n_train)
    old_blocks = arr.computed.shape[1]
    more = integer_data(n_new, 3, 2)
    segment = arr.append_train(more)
    assert (segment.side, segment.index, segment.span) == (
        "train",
        1,
        range(n_train, n_train + n_new),
    )
    assert arr.shape == (7, n_train + n_new) and arr.grid_shape[1] == -(-arr.shape[1] // 4)
    partial = n_train % BLOCK[1] != 0
    kept = old_blocks - partial  # the partial last block column is computed again, whole
    assert arr.computed[:, :kept].all() and not arr.computed[:, kept:].any()
    new_cols = arr.grid_shape[1] - kept
    assert arr.fill(progress=False) == 3 * new_cols
    stats = arr.stats
    assert stats.test_factors == 0 and stats.train_factors == new_cols  # the rest is stored
    full = data["test"][0] @ joined(data["train"], more)[0].T
    np.testing.assert_array_equal(np.asarray(arr), full)
    check_top_k(arr, full)


def test_top_k_rows_scan_only_the_new_points(tmp_path: Path) -> None:
    arr, data = filled(tmp_path / "s", 7, 8)
    arr.append_train(integer_data(8, 3, 2))
    tk = arr.top_k_array(3, axis=1)
    assert not tk.computed.any()  # kept as a base, brought up to date on read
    assert tk.fill(progress=False) == 3
    assert tk.stats.blocks_read + tk.stats.blocks_computed == 3 * 2  # 3 row blocks x 2 new
    assert not arr.computed[:, 2:].any()  # top-k writes no matrix block
    other = arr.top_k_array(2, axis=0, largest=False)
    assert other.computed.tolist() == [True, True, False, False]  # new train rows: not yet
    full = data["test"][0] @ joined(data["train"], integer_data(8, 3, 2))[0].T
    check_top_k(arr, full)


@pytest.mark.parametrize(("n_test", "n_new"), [(6, 3), (7, 4)])
def test_append_test(tmp_path: Path, n_test: int, n_new: int) -> None:
    arr, data = filled(tmp_path / "s", n_test, 10)
    more = integer_data(n_new, 3, 3)
    assert str(arr.append_test(more)) == f"test segment 1 ({n_test}:{n_test + n_new})"
    kept = n_test // BLOCK[0]
    assert arr.computed[:kept].all() and not arr.computed[kept:].any()
    full = joined(data["test"], more)[0] @ data["train"][0].T
    np.testing.assert_array_equal(arr[:], full)
    assert arr.stats.train_factors == 0
    check_top_k(arr, full)


def test_appends_on_both_axes_then_reopen(tmp_path: Path) -> None:
    arr, data = filled(tmp_path / "s", 7, 10)
    train2, train3, test2 = integer_data(3, 3, 4), integer_data(5, 3, 5), integer_data(2, 3, 6)
    arr.append_train(train2)
    arr.top_k_array(3).values[0]  # one row block brought up to date, the others kept
    arr.append_test(test2)
    arr.append_train(train3)
    assert [str(s) for s in arr.segments] == [
        "test segment 1 (7:9)",
        "train segment 1 (10:13)",
        "train segment 2 (13:18)",
    ]
    test, train = joined(data["test"], test2), joined(joined(data["train"], train2), train3)
    full = test[0] @ train[0].T
    check_top_k(arr, full)
    np.testing.assert_array_equal(arr[:], full)
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train)
    assert again.shape == (9, 18) and again.block_shape == BLOCK
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train, block_shape=(3, 4))
    np.testing.assert_array_equal(again[:], full)
    ro = ia.open(tmp_path / "s")
    assert ro.shape == (9, 18) and len(ro.segments) == 3
    np.testing.assert_array_equal(ro[:], full)
    assert "appended test 7:9; train 10:13, 13:18" in repr(ro)
    assert ro.store_report().ok and ro.verify() == []


def test_reopen_with_other_data_names_the_segment(tmp_path: Path) -> None:
    arr, data = filled(tmp_path / "s", 7, 10)
    more = integer_data(6, 3, 2)
    arr.append_train(more)
    test, train = data["test"], joined(data["train"], more)
    changed = train[0].copy()
    changed[12] += 1
    with pytest.raises(ia.StaleCacheError, match=r"different train segment 1 \(10:16\) than") as e:
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=(changed, train[1]))
    assert e.value.differences == ["train segment 1 (10:16)"]
    changed = train[0].copy()
    changed[2] += 1
    with pytest.raises(ia.StaleCacheError, match=r"different train than"):
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=(changed, train[1]))
    with pytest.raises(ia.StaleCacheError, match="shape"):
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=data["train"])


def test_refusals(tmp_path: Path) -> None:
    arr, data = filled(tmp_path / "s", 7, 10)
    with pytest.raises(ValueError, match="needs the model or function"):
        ia.open(tmp_path / "s").append_train(integer_data(2, 3, 2))
    with pytest.raises(
        ValueError, match=r"x has shape \(4,\) .* store's train samples have shape \(3,\)"
    ):
        arr.append_train(integer_data(2, 4, 2))
    with pytest.raises(ValueError, match="dtype"):
        arr.append_test((np.zeros((2, 3), np.float32), np.zeros(2)))
    with pytest.raises(ValueError, match="empty"):
        arr.append_train((np.zeros((0, 3)), np.zeros(0)))
    with pytest.raises(TypeError, match="takes the train data to append"):
        arr.append_train(3)
    read_only = zarr.storage.LocalStore(tmp_path / "s", read_only=True)
    with pytest.raises(PermissionError, match="read-only"):
        ia.open(read_only, FeatureFactors(), **data).append_train(integer_data(2, 3, 2))
    claim = tmp_path / "s" / layout.MATRIX.claims_prefix / layout.unit_claim((1, 1), (0, 0))
    claim.parent.mkdir(parents=True, exist_ok=True)
    claim.write_text(json.dumps({"owner": "elsewhere:1:ab", "expires": time.time() + 60}))
    with pytest.raises(RuntimeError, match=r"while it is being filled: 1 other process\(es\)"):
        arr.append_train(integer_data(2, 3, 2))
    claim.unlink()
    assert arr.shape == (7, 10) and arr.segments == []  # nothing was appended
    assert ia.open(tmp_path / "s").shape == (7, 10)


def test_block_function_arrays_grow_by_a_count(tmp_path: Path) -> None:
    calls: list[tuple[range, range]] = []

    def fn(rows: range, cols: range) -> np.ndarray:
        calls.append((rows, cols))
        return np.add.outer(np.asarray(rows) * 100.0, np.asarray(cols))

    arr = ia.InfluenceArray.from_function(tmp_path / "s", fn, shape=(5, 8), block_shape=(2, 4))
    arr.fill(progress=False)
    calls.clear()
    arr.append_train(3)
    arr.append_test(1)
    np.testing.assert_array_equal(arr[:], np.add.outer(np.arange(6) * 100.0, np.arange(11)))
    assert sorted((r.start, c.start) for r, c in calls) == [(0, 8), (2, 8), (4, 0), (4, 4), (4, 8)]
    with pytest.raises(TypeError, match="pass how many train points to add"):
        arr.append_train((np.zeros((2, 3)), np.zeros(2)))
    assert ia.open(tmp_path / "s", fn=fn).shape == (6, 11)


def test_info_shows_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arr, _ = filled(tmp_path / "s", 4, 5)
    arr.append_train(integer_data(2, 3, 2))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    record = json.loads(out[out.index("{") :])
    assert record["shape"] == [4, 7]
    assert [(s["side"], s["start"], s["stop"]) for s in record["segments"]] == [("train", 5, 7)]
    assert "curvature fitted before this segment" in record["segments"][0]["curvature"]


def test_an_append_killed_after_its_record_is_finished_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = filled(tmp_path / "s", 7, 10)
    more = integer_data(3, 3, 2)
    store = InfluenceStore.open(tmp_path / "s")
    segment = Segment.new("train", 1, range(10, 13), "not checked here")
    growth = AxisGrowth("train", 10, 13, BLOCK[1])

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("infl_array.storage.growth.settled_meta", killed)
    with pytest.raises(KeyboardInterrupt):
        grow_store(store, growth, segment)
    monkeypatch.undo()
    with pytest.raises(NotAStoreError, match="append to the store was interrupted"):
        ia.open(tmp_path / "s")
    group = zarr.open_group(tmp_path / "s", mode="r")
    assert group[layout.MATRIX.path].shape == (7, 10)  # recorded, not grown yet
    train = joined(data["train"], more)
    with pytest.raises(ia.StaleCacheError, match="train segment 1"):
        ia.open(tmp_path / "s", FeatureFactors(), test=data["test"], train=train)
    reopened = ia.open(tmp_path / "s")  # the failed open above settled the store
    assert reopened.shape == (7, 13)
    assert zarr.open_group(tmp_path / "s", mode="r")[layout.factors("train").path].shape[0] == 13


def test_a_handle_opened_before_an_append_stores_nothing_short(tmp_path: Path) -> None:
    """Another handle (as another process) opened before the append, and a top-k array taken
    before it, would store blocks and rows over the old points only: they are refused, named,
    and the grown store stays exact."""
    _, data = filled(tmp_path / "s", 7, 10)
    arr = ia.open(tmp_path / "s", FeatureFactors(), **data)
    ia.InfluenceArray.create(tmp_path / "s2", FeatureFactors(), block_shape=BLOCK, **data)
    other = ia.open(tmp_path / "s2", FeatureFactors(), **data)  # nothing stored yet
    old_top_k_source = ia.open(tmp_path / "s", FeatureFactors(), **data)
    old_top_k = old_top_k_source.top_k_array(4)
    arr.self_influence()[:1]  # the self-influence array exists (at the old length)
    more = integer_data(3, 3, 2)
    arr.append_train(more)
    ia.open(tmp_path / "s2", FeatureFactors(), **data).append_train(more)
    with pytest.raises(ia.StaleCacheError, match=r"grew since this array was opened \(train se"):
        other[:, 8:10]  # the partial last block column: dropped by the append, and short here
    with pytest.raises(ia.StaleCacheError, match="computed here would miss the appended") as e:
        old_top_k.fill(progress=False)
    assert e.value.differences == ["train segment 1 (10:13)"]
    with pytest.raises(ia.StaleCacheError, match="its self-influence would miss the appended"):
        old_top_k_source.self_influence()
    train = joined(data["train"], more)
    full = data["test"][0] @ train[0].T
    for path in ("s", "s2"):
        grown = ia.open(tmp_path / path, FeatureFactors(), test=data["test"], train=train)
        np.testing.assert_array_equal(grown[:], full)
        values, indices = brute_top_k(full, 4, 1, True)
        np.testing.assert_array_equal(grown.top_k_array(4).indices[:], indices)
        np.testing.assert_array_equal(grown.top_k_array(4).values[:], values)


def test_grown_data_given_to_a_store_not_appended_to_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    _, data = filled(tmp_path / "s", 7, 10)
    train = joined(data["train"], integer_data(3, 3, 2))
    with pytest.raises(
        ia.StaleCacheError, match=r"holds 10 train points, but the train data given have 13.*"
        r"arr.append_train\(the other 3\)",
    ):  # fmt: skip
        ia.open(tmp_path / "s", FeatureFactors(), test=data["test"], train=train)


@pytest.mark.parametrize(("axis", "largest"), [(1, False), (0, True)])
def test_a_top_k_over_every_old_point_grows_exactly(
    tmp_path: Path, axis: int, largest: bool
) -> None:
    """k equal to the old length of the reduced axis (the base covers every old point), then k
    larger than the old length once it grew; ties to the lower index."""
    arr, data = filled(tmp_path / "s", 7, 10)
    old_n = arr.shape[axis]
    arr.top_k_array(old_n, axis=axis, largest=largest).fill(progress=False)
    more = integer_data(5, 3, 2)
    test, train = data["test"], data["train"]
    if axis == 1:
        arr.append_train(more)
        train = joined(train, more)
    else:
        arr.append_test(more)
        test = joined(test, more)
    full = test[0] @ train[0].T
    for k in (old_n, old_n + 2):
        values, indices = brute_top_k(full, k, axis, largest)
        tk = arr.top_k_array(k, axis=axis, largest=largest)
        got_v, got_i = (tk.values[:], tk.indices[:])
        got_v, got_i = (got_v, got_i) if axis == 1 else (got_v.T, got_i.T)
        np.testing.assert_array_equal(got_i, indices)
        np.testing.assert_array_equal(got_v, values)


def test_a_reader_storing_the_partial_block_during_an_append_leaves_no_short_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader opened before the append computes the partial last block column after the
    append dropped it and before the append's record: its short chunk is dropped again."""
    arr, data = filled(tmp_path / "s", 7, 10)
    reader = ia.open(tmp_path / "s", FeatureFactors(), **data)
    real = growth.write_segment

    def reader_between(zarr_store: Any, segment: Segment) -> None:
        assert not reader.computed[:, 2].any()  # the append dropped the partial block column
        reader[:, 8:10]  # computed and stored at the old shape
        assert reader.computed[:, 2].all()
        real(zarr_store, segment)

    monkeypatch.setattr(growth, "write_segment", reader_between)
    more = integer_data(3, 3, 2)
    arr.append_train(more)
    train = joined(data["train"], more)
    grown = ia.open(tmp_path / "s", FeatureFactors(), test=data["test"], train=train)
    np.testing.assert_array_equal(grown[:], data["test"][0] @ train[0].T)


def test_an_append_from_a_handle_opened_before_another_append_is_refused(tmp_path: Path) -> None:
    """Two handles append in turn: the second holds the old shape, so its segment would not
    follow the first one (a damaged record for every later open); it is refused, named."""
    _, data = filled(tmp_path / "s", 7, 10)
    first, second = (ia.open(tmp_path / "s", FeatureFactors(), **data) for _ in range(2))
    more = integer_data(3, 3, 2)
    first.append_train(more)
    with pytest.raises(ia.StaleCacheError, match=r"grew since .*\(train segment 1 \(10:13\)\)"):
        second.append_test(integer_data(2, 3, 3))
    assert [str(s) for s in ia.open(tmp_path / "s").segments] == ["train segment 1 (10:13)"]
    train = joined(data["train"], more)
    grown = ia.open(tmp_path / "s", FeatureFactors(), test=data["test"], train=train)
    assert str(grown.append_train(integer_data(2, 3, 4))) == "train segment 2 (13:15)"


def test_a_top_k_array_taken_before_an_append_stores_no_row_over_the_old_points(
    tmp_path: Path,
) -> None:
    """No partial block (8 train points, blocks of 4): the rows kept as a base cover every
    point the old handle holds, so it would store them as they were; refused."""
    arr, data = filled(tmp_path / "s", 7, 8)
    old_top_k = arr.top_k_array(3)
    more = integer_data(3, 3, 2)
    arr.append_train(more)
    with pytest.raises(ia.StaleCacheError, match="the rows of topk/axis1-largest-k3 computed h"):
        old_top_k.values[:]
    full = data["test"][0] @ joined(data["train"], more)[0].T
    np.testing.assert_array_equal(arr.top_k_array(3).indices[:], brute_top_k(full, 3, 1, True)[1])
