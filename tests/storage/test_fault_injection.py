"""Fault injection: one damaged chunk of any stored array is found, repaired, and hangs nothing.

For every array a model-backed store keeps (the matrix ``influence``, ``self_influence``, and
the stored factors ``factors/test`` and ``factors/train``) and every fault (a chunk truncated
to half its bytes, one byte flipped, the chunk deleted), one chunk is damaged, and then:

* ``store_report()`` names the array and the block of a truncated or flipped chunk; a deleted
  chunk is no damage but a block not computed, one fewer stored;
* without repair, a fill and then a read that needs the chunk raise ``CorruptBlockError`` or
  give the original values;
* ``repair()`` leaves a clean report, after which a fill and a read give the original values,
  and the factor arrays hold their original factors.

Every step runs in a thread with a time bound, so a hang fails its test instead of blocking
the run; a hung step is then unblocked (the damaged chunk deleted) so its thread ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

import infl_array as ia
from infl_array.cli import main
from infl_array.engine.plan import ClaimUnits
from infl_array.storage import layout
from infl_array.storage.claims import ClaimBook
from infl_array.storage.zarr_compat import read_key, write_key
from infl_array.torch import DirectInfluence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOUND_S = 30.0
"""Most seconds a step may take (each takes well under one on this tiny store)."""

BLOCK_SHAPE = (3, 10)  # 10 test x 30 train points: a 4 x 3 grid, 4 test and 3 train blocks


def _problem() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()  # a convex loss: positive definite at any weights
    infl = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=0.1)
    train, test = (x[:30], y[:30]), (x[30:], y[30:])
    return {"infl": infl.fit(train), "train": train, "test": test}


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    return _problem()


def _create(path: Path, problem: dict[str, Any]) -> Any:
    """A new float64 store of the problem (4 x 3 blocks), nothing computed."""
    return ia.InfluenceArray.create(
        path,
        problem["infl"],
        test=problem["test"],
        train=problem["train"],
        block_shape=BLOCK_SHAPE,
        dtype="float64",
    )


def _open(path: Path, problem: dict[str, Any]) -> Any:
    """A fresh array object (nothing memoised from earlier steps) that can compute."""
    return ia.open(path, problem["infl"], test=problem["test"], train=problem["train"])


def _values(path: Path, problem: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every stored array of a complete store, read back."""
    arr = _open(path, problem)
    found = {"influence": np.asarray(arr), "self_influence": np.asarray(arr.self_influence())}
    group = zarr.open_group(path, mode="r")
    for side in layout.FACTOR_SIDES:
        found[layout.factors(side).path] = np.asarray(group[layout.factors(side).path])
    return found


@pytest.fixture(scope="module")
def original(problem: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The values of an undamaged, complete store."""
    path = tmp_path_factory.mktemp("original") / "s"
    _create(path, problem).fill(progress=False)
    return _values(path, problem)


# ---------------------------------------------------------------------- what each case damages
@dataclass(frozen=True)
class Target:
    """One stored array: the chunk to damage, what stores it, and a read that needs it."""

    array: str
    chunk: tuple[int, ...]  # zarr chunk index
    block: str  # how reports and errors name it
    seed: Callable[[Any], Any]  # stores the chunk (and what the read below does not need)
    need: Callable[[Any], np.ndarray]  # a read that needs the chunk
    expected: Callable[[dict[str, Any]], np.ndarray]  # what ``need`` gives on a sound store


def _fill_and_self_influence(arr: Any) -> None:
    arr.fill(progress=False)
    np.asarray(arr.self_influence())


TARGETS = {
    "influence": Target(
        "influence",
        (1, 2),
        "block (1, 2)",
        lambda arr: arr.fill(progress=False),
        np.asarray,
        lambda o: o["influence"],
    ),
    "self_influence": Target(
        "self_influence",
        (1,),
        "train block 1",
        _fill_and_self_influence,
        lambda arr: np.asarray(arr.self_influence()),
        lambda o: o["self_influence"],
    ),
    # block column 0 stores every test factor block; columns 1-2 need them all
    "factors/test": Target(
        "factors/test",
        (1, 0),
        "test block 1",
        lambda arr: arr[:, :10],
        lambda arr: arr[:, 10:],
        lambda o: o["influence"][:, 10:],
    ),
    # block row 0 stores every train factor block; rows 1-3 need them all
    "factors/train": Target(
        "factors/train",
        (2, 0),
        "train block 2",
        lambda arr: arr[:3],
        lambda arr: arr[3:],
        lambda o: o["influence"][3:],
    ),
}


def _truncate(chunk: Path) -> None:
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])


def _flip(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


FAULTS: dict[str, Callable[[Path], None]] = {
    "truncate": _truncate,
    "flip": _flip,
    "delete": Path.unlink,
}

CASES = [(array, fault) for array in TARGETS for fault in FAULTS]


@dataclass(frozen=True)
class Damaged:
    """A store with one damaged chunk, and what it held before."""

    path: Path
    target: Target
    chunk_file: Path
    stored_before: int  # chunks of the target array before the damage
    problem: dict[str, Any]
    original: dict[str, Any]

    def open(self) -> Any:
        return _open(self.path, self.problem)

    def unblock(self) -> None:
        """Delete the damaged chunk (what lets a read hung on it go on)."""
        self.chunk_file.unlink(missing_ok=True)


@pytest.fixture
def damage(
    problem: dict[str, Any], original: dict[str, Any], tmp_path: Path
) -> Callable[[str, str], Damaged]:
    def make(array: str, fault: str) -> Damaged:
        target = TARGETS[array]
        path = tmp_path / "s"
        arr = _create(path, problem)
        target.seed(arr)
        stored = _report(path).arrays
        before = next(a.stored for a in stored if a.array == array)
        chunk_file = path / layout.array_layout(array).chunk_key(target.chunk)
        assert chunk_file.is_file()
        FAULTS[fault](chunk_file)
        return Damaged(path, target, chunk_file, before, problem, original)

    return make


def _report(path: Path) -> Any:
    return ia.open(path).store_report()


def bounded(step: Callable[[], Any], bound_s: float, unblock: Callable[[], None]) -> Any:
    """``step()`` run in a thread; fails the test when it takes longer than ``bound_s``.

    A hung step is unblocked with ``unblock()`` (so its thread ends) before the test fails.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = step()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, name="bounded-step", daemon=True)
    thread.start()
    thread.join(bound_s)
    if thread.is_alive():
        unblock()
        thread.join(BOUND_S)
        pytest.fail(f"the step did not finish within {bound_s:.0f} s: it hangs")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ---------------------------------------------------------------------- the fault matrix
@pytest.mark.parametrize(("array", "fault"), CASES)
def test_report_names_the_damaged_array_and_block_and_repair_restores_it(
    array: str, fault: str, damage: Callable[[str, str], Damaged]
) -> None:
    d = damage(array, fault)
    unblock = d.unblock
    report = bounded(lambda: _report(d.path), BOUND_S, unblock)
    check = next(a for a in report.arrays if a.array == array)
    if fault == "delete":  # a block not computed: no damage, one fewer stored
        assert report.ok and check.stored == d.stored_before - 1
    else:
        assert [(x.array, x.what) for x in report.damaged] == [(array, d.target.block)]
        assert report.damaged[0].key == layout.array_layout(array).chunk_key(d.target.chunk)
        assert check.stored == d.stored_before and not report.ok
        text = "\n".join(report.lines())
        assert f"{array}: 1 of {d.stored_before} stored blocks are damaged" in text
        assert d.target.block in text
    if array == "influence":  # what arr.verify() keeps saying (SPEC)
        assert ia.open(d.path).verify() == ([] if fault == "delete" else [(1, 2)])
    else:
        assert ia.open(d.path).verify() == []

    recomputed = bounded(lambda: d.open().repair(), BOUND_S, unblock)
    assert recomputed == ([(1, 2)] if array == "influence" and fault != "delete" else [])
    assert bounded(lambda: _report(d.path), BOUND_S, unblock).ok
    got = bounded(lambda: d.target.need(d.open()), BOUND_S, unblock)
    np.testing.assert_allclose(got, d.target.expected(d.original), rtol=1e-10, atol=1e-13)
    after = bounded(lambda: _values(d.path, d.problem), BOUND_S, unblock)  # fills the rest
    for name, values in d.original.items():
        np.testing.assert_allclose(after[name], values, rtol=1e-10, atol=1e-13, err_msg=name)
    final = _report(d.path)
    assert final.ok and all(a.stored == a.blocks for a in final.arrays)


@pytest.mark.parametrize(("array", "fault"), CASES)
def test_a_fill_and_a_read_needing_a_damaged_chunk_raise_or_recompute_in_bounded_time(
    array: str, fault: str, damage: Callable[[str, str], Damaged]
) -> None:
    d = damage(array, fault)

    def fill_then_read() -> np.ndarray:
        d.open().fill(progress=False)  # computes what is missing; never waits forever
        return d.target.need(d.open())

    try:
        got = bounded(fill_then_read, BOUND_S, d.unblock)
    except ia.CorruptBlockError as exc:
        assert fault != "delete"  # a deleted chunk is only missing: it is computed
        assert d.target.block in str(exc) and "repair" in str(exc)
        return
    np.testing.assert_allclose(got, d.target.expected(d.original), rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------- the command line
def test_infl_array_verify_names_a_damaged_factor_chunk(
    damage: Callable[[str, str], Damaged], capsys: pytest.CaptureFixture[str]
) -> None:
    d = damage("factors/train", "flip")
    assert main(["verify", str(d.path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "factors/train: 1 of 3 stored blocks are damaged: train block 2" in out
    assert "influence: all 3 stored blocks pass" in out and "arr.repair()" in out
    d.open().repair()
    assert main(["verify", str(d.path), "--quiet"]) == 0
    assert "damaged" not in capsys.readouterr().out


# ---------------------------------------------------------------------- claims
GARBLED_CLAIM = b'{"owner": "host:1'  # a claim object cut short


def test_an_unreadable_claim_holds_its_unit_one_lifetime_then_is_taken_over(
    tmp_path: Path,
) -> None:
    zstore = LocalStore(tmp_path)
    write_key(zstore, layout.MATRIX.claims_prefix + "1.2", GARBLED_CLAIM)
    book = ClaimBook(zstore, layout.MATRIX.claims_prefix, ttl_s=0.5)
    assert not book.try_claim("1.2")  # it may be a claim being written
    time.sleep(0.6)
    assert book.try_claim("1.2")  # unreadable for a whole lifetime: damage, taken over
    book.close()
    assert read_key(zstore, layout.MATRIX.claims_prefix + "1.2") is None


def test_a_damaged_claim_is_reported_never_hangs_a_fill_and_repair_deletes_it(
    damage: Callable[[str, str], Damaged], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = damage("influence", "delete")  # block (1, 2) missing ...
    units = ClaimUnits.for_grid(ia.open(d.path).grid_shape)  # the unit a fill claims
    key = layout.MATRIX.claims_prefix + units.name(units.unit_of((1, 2)))
    (d.path / key).parent.mkdir(parents=True, exist_ok=True)
    (d.path / key).write_bytes(GARBLED_CLAIM)  # ... and held by a damaged claim
    report = _report(d.path)
    assert [(x.array, x.what, x.key) for x in report.damaged] == [("claims", f"claim {key}", key)]
    monkeypatch.setattr("infl_array.storage.claims.CLAIM_TTL_S", 1.0)
    assert bounded(lambda: d.open().fill(progress=False), BOUND_S, d.unblock) == 1
    np.testing.assert_allclose(np.asarray(ia.open(d.path)), d.original["influence"], rtol=1e-10)

    (d.path / key).write_bytes(GARBLED_CLAIM)
    assert bounded(lambda: d.open().repair(), BOUND_S, d.unblock) == []
    assert not (d.path / key).exists() and _report(d.path).ok


# ---------------------------------------------------------------------- arrays of later versions
def test_an_array_the_layout_reserves_is_checked_as_soon_as_it_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "s"
    fn = lambda rows, cols: np.add.outer(np.asarray(rows), np.asarray(cols))  # noqa: E731
    ia.InfluenceArray.from_function(path, fn, shape=(10, 30), block_shape=(3, 10)).fill(
        progress=False
    )
    values = layout.top_k(2, axis=1, largest=True).values  # written here by hand
    group = zarr.open_group(path, mode="r+")
    group.create_array(
        values.path,
        shape=(10, 2),
        chunks=(3, 2),
        dtype="float64",
        fill_value=np.nan,
        compressors=ia.Compression().compressors(),  # with its CRC32C, as infl_array writes
        dimension_names=values.dimension_names,
        chunk_key_encoding={"name": "default", "separator": "/"},
    )[:] = np.ones((10, 2))
    group.create_array("foreign", shape=(2,), dtype="int8")  # not infl_array's: not checked
    _flip(path / values.chunk_key((1, 0)))
    report = _report(path)
    assert [a.array for a in report.arrays] == ["influence", values.path]
    assert [(x.array, x.what) for x in report.damaged] == [(values.path, "test block 1")]
