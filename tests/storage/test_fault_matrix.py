"""Fault matrix (issue 21): every kind of stored object of a model store, damaged, under every
operation.

A ``ProjectedInfluence`` store holding only block row 0 and block column 0 of its matrix (so
reads need the stored factors), its self-influence, both factor arrays, a top-k array and a
note is copied for each case; one object is truncated, bit-flipped or deleted: a chunk of each
array (matrix, self-influence, factors of each side, top-k values and indices), the note, or
the zarr metadata of any node (the group, the matrix, the self-influence, the factors group and
arrays, the top-k group and arrays). Then each operation (read, fill, ``top_k``,
``top_k_array``, ``self_influence``, ``verify``, ``store_report``, ``repair``) runs on a fresh
copy, bounded in time, and must give the right values or raise a clear error that names the
fix. Last, ``repair()`` (or, for the group's or the matrix's own metadata, ``create(...,
overwrite=True)``, which that error names) restores a store whose every value is right and
whose report is clean. (``test_fault_injection`` covers the same for a ``DirectInfluence``
store and for claims; the soak in ``benchmarks/soak`` draws such faults at random.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import bounded
from zarr.storage import LocalStore

import infl_array as ia
from infl_array.storage.notes import read_notes, write_notes
from infl_array.torch import ProjectedInfluence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOUND_S = 60.0
"""Most seconds one operation may take (each takes well under one on this tiny store)."""

TOP_K = "topk/axis1-largest-k2"
OBJECTS = {
    "matrix chunk": "influence/c/0/1",
    "self-influence chunk": "self_influence/c/1",
    "test factors chunk": "factors/test/c/2/0",
    "train factors chunk": "factors/train/c/1/0",
    "top-k values chunk": f"{TOP_K}/values/c/1/0",
    "top-k indices chunk": f"{TOP_K}/indices/c/1/0",
    "note": "influence/notes/planted.json",
    "group metadata": "zarr.json",
    "matrix metadata": "influence/zarr.json",
    "self-influence metadata": "self_influence/zarr.json",
    "factors group metadata": "factors/zarr.json",
    "train factors metadata": "factors/train/zarr.json",
    "top-k group metadata": f"{TOP_K}/zarr.json",
    "top-k values metadata": f"{TOP_K}/values/zarr.json",
    "top-k indices metadata": f"{TOP_K}/indices/zarr.json",
}
FAULTS: dict[str, Callable[[Path], None]] = {
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flip": lambda p: p.write_bytes(_flipped(p.read_bytes())),
    "delete": Path.unlink,
}


def _flipped(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


class Problem:
    """The fitted model and data, the pristine store and every value it must give."""

    def __init__(self, root: Path) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
        y = (x[:, 0] > 0).long() + (x[:, 2] > 1).long()
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
        ).double()
        loss = torch.nn.functional.cross_entropy
        self.infl = ProjectedInfluence(model, loss, 0.1, projection_dim=8).fit((x[:30], y[:30]))
        self.data = {"test": (x[30:], y[30:]), "train": (x[:30], y[:30])}
        full = self.create(root / "full")
        self.matrix = np.asarray(full)
        self.self_influence = np.asarray(full.self_influence())
        order = np.argsort(-self.matrix, axis=1, kind="stable")[:, :2]
        self.top_k = (np.take_along_axis(self.matrix, order, axis=1), order)
        self.path = root / "pristine"
        part = self.create(self.path)
        part[:3], part[:, :10]  # block row 0, block column 0; every factor block
        part.self_influence()[:]
        part.top_k_array(2, axis=1).fill(progress=False)
        write_notes(LocalStore(self.path), {"planted": "a note to damage"})

    def create(self, path: Path) -> Any:
        return ia.InfluenceArray.create(
            path, self.infl, block_shape=(3, 10), dtype="float64", overwrite=True, **self.data
        )

    def open(self, path: Path) -> Any:
        return ia.open(path, self.infl, **self.data)


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory) -> Problem:
    return Problem(tmp_path_factory.mktemp("fault_matrix"))


def _close(got: Any, want: np.ndarray) -> bool:
    return bool(np.allclose(got, want, rtol=1e-10, atol=1e-13))


OPS: dict[str, Callable[[Problem, Path], bool]] = {
    "read": lambda p, s: _close(np.asarray(p.open(s)), p.matrix),
    "fill": lambda p, s: (
        p.open(s).fill(progress=False) >= 0 and _close(np.asarray(ia.open(s)), p.matrix)
    ),
    "top_k": lambda p, s: _close(p.open(s).top_k(2)[0], p.top_k[0]),
    "top_k_array": lambda p, s: (
        _close(p.open(s).top_k_array(2).values[:], p.top_k[0])
        and np.array_equal(ia.open(s).top_k_array(2, 1, True).indices[:], p.top_k[1])
    ),
    "self_influence": lambda p, s: _close(np.asarray(p.open(s).self_influence()), p.self_influence),
    "verify": lambda p, s: isinstance(p.open(s).verify(), list),
    "store_report": lambda p, s: isinstance(ia.open(s).store_report().ok, bool),
    "repair": lambda p, s: isinstance(p.open(s).repair(), list),
}


def _damaged_copy(problem: Problem, where: Path, obj: str, fault: str) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(problem.path, where)
    FAULTS[fault](where / OBJECTS[obj])
    return where


def _is_clear(exc: BaseException) -> bool:
    """infl_array's own error for damage, saying what to do."""
    fixes = ("repair", "overwrite=True", "InfluenceArray.create")
    return isinstance(exc, (ia.CorruptBlockError, ia.NotAStoreError)) and any(
        f in str(exc) for f in fixes
    )


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("obj", list(OBJECTS))
def test_every_operation_on_a_damaged_object_is_right_or_a_clear_error_and_repair_restores(
    problem: Problem, tmp_path: Path, obj: str, fault: str
) -> None:
    for op, run in OPS.items():
        store = _damaged_copy(problem, tmp_path / op, obj, fault)
        try:
            right, _ = bounded(lambda: run(problem, store), BOUND_S)  # noqa: B023
        except Exception as exc:
            assert _is_clear(exc), f"{op}: unclear {type(exc).__name__}: {exc}"
        else:
            assert right, f"{op} gave wrong values"

    store = _damaged_copy(problem, tmp_path / "restore", obj, fault)
    try:
        bounded(lambda: problem.open(store).repair(), BOUND_S)
    except ia.NotAStoreError as exc:  # the group's or the matrix's own metadata
        assert obj in ("group metadata", "matrix metadata")
        assert "overwrite=True" in str(exc) or "InfluenceArray.create" in str(exc)
        problem.create(store)  # what the error says: accepted, not refused as foreign data
    assert bounded(lambda: ia.open(store).store_report(), BOUND_S)[0].ok
    for op in ("read", "top_k_array", "self_influence"):
        assert bounded(lambda: OPS[op](problem, store), BOUND_S)[0], op  # noqa: B023
    assert ia.open(store).store_report().ok


# ---------------------------------------------------------------------- what repair does
def test_damaged_metadata_of_a_derived_array_is_reported_and_repair_deletes_it(
    problem: Problem, tmp_path: Path
) -> None:
    store = _damaged_copy(problem, tmp_path / "s", "top-k indices metadata", "truncate")
    report = ia.open(store).store_report()
    assert [(d.array, d.what, d.key) for d in report.damaged] == [
        (TOP_K, "metadata", f"{TOP_K}/indices/zarr.json")
    ]
    assert "zarr metadata that does not decode" in "\n".join(report.lines())
    with pytest.raises(ia.NotAStoreError, match=rf"{TOP_K}/indices.*arr\.repair\(\) deletes it"):
        ia.open(store).top_k_array(2, 1, True)
    problem.open(store).repair()
    assert not any(p.is_file() for p in (store / TOP_K).rglob("*"))  # its folders may stay
    assert ia.open(store).store_report().ok
    assert OPS["top_k_array"](problem, store)


def test_an_indices_chunk_deleted_alone_makes_its_rows_computed_again_never_minus_one(
    problem: Problem, tmp_path: Path
) -> None:
    store = _damaged_copy(problem, tmp_path / "s", "top-k indices chunk", "delete")
    tk = problem.open(store).top_k_array(2, axis=1)
    assert not tk.computed[1] and tk.computed[0]
    np.testing.assert_array_equal(tk.indices[:], problem.top_k[1])
    assert (store / OBJECTS["top-k indices chunk"]).exists()


def test_a_damaged_note_is_rewritten_as_lost_by_repair_never_removed(
    problem: Problem, tmp_path: Path
) -> None:
    store = _damaged_copy(problem, tmp_path / "s", "note", "truncate")
    assert [d.what for d in ia.open(store).store_report().damaged] == ["note planted"]
    assert "unreadable note" in read_notes(LocalStore(store))["planted"]
    problem.open(store).repair()
    assert ia.open(store).store_report().ok
    assert "damaged" in read_notes(LocalStore(store))["planted"]
    assert "message is lost" in repr(ia.open(store))


def test_overwrite_replaces_a_store_whose_group_metadata_is_damaged_not_foreign_data(
    problem: Problem, tmp_path: Path
) -> None:
    store = _damaged_copy(problem, tmp_path / "s", "group metadata", "flip")
    with pytest.raises(ia.NotAStoreError, match="overwrite=True"):
        ia.open(store)
    problem.create(store).fill(progress=False)
    assert _close(np.asarray(ia.open(store)), problem.matrix)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "zarr.json").write_bytes(b"not json")
    with pytest.raises(FileExistsError, match="not an infl_array store"):
        problem.create(foreign)
