"""Fault kind "damaged chunk": one object of a store truncated, bit-flipped or deleted.

Three small stores are made once and copied for every fault: a ``from_function`` store (12 x 15,
blocks 4 x 5) with a top-k array and a note, and a ``ProjectedInfluence`` store of a small MLP
(10 x 30, blocks 3 x 10) with its self-influence, stored factors, a top-k array and a note, one
complete and one holding only block row 0 and block column 0 (so reads need the stored
factors). A fault picks one object of the copy at random (a chunk of any array, the zarr
metadata of any node, a note, or a claim planted on a missing block), damages it (truncate to
half, flip a byte, delete), then runs one random operation (read, fill, ``top_k``,
``top_k_array``, ``self_influence``, ``verify``, ``store_report``, ``repair``), each bounded in
time. The operation must return the right values or raise a clear error (infl_array's own, or
an ``OSError`` naming the block). Then ``repair()`` and ``fill()`` must restore the store: every
block checked against the reference (exactly for the function store, to 1e-5 for the model),
the top-k arrays and self-influence too, and no block that was stored and undamaged may be
missing (lost).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from soak_common import Hang, Tally, bounded, check_blocks, clear_error, files_of, now, values

FAULTS = ("truncate", "flip", "delete")
OPS = ("read", "fill", "top_k", "top_k_array", "self_influence", "verify", "report", "repair")
GARBLED_CLAIM = b'{"owner": "host:1'


def damage_file(path: Path, fault: str) -> None:
    if fault == "delete":
        path.unlink()
        return
    data = path.read_bytes()
    if fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))


@dataclass
class Base:
    """A pristine store to copy, how to open it, and what it must hold."""

    name: str
    path: Path
    opener: Callable[[Path], Any]
    recreate: Callable[[Path], Any]
    matrix: np.ndarray
    self_influence: np.ndarray | None
    rtol: float

    def close(self, got: Any, want: np.ndarray) -> bool:
        """Equal for the function store; within ``rtol`` of the largest value for the model."""
        atol = self.rtol * float(np.abs(self.matrix).max())
        return bool(np.allclose(got, want, rtol=self.rtol, atol=atol))

    def top_k(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.matrix, axis=1, kind="stable")[:, :2]
        return np.take_along_axis(self.matrix, order, axis=1), order


def _finish(arr: Any) -> None:
    """Everything the stores hold besides the matrix: a top-k array and a note."""
    from zarr.storage import LocalStore

    from infl_array.storage.notes import write_notes

    arr.top_k_array(2, axis=1).fill(progress=False)
    write_notes(LocalStore(arr.store_path), {"planted": "a note the soak planted"})


def function_base(root: Path) -> Base:
    import infl_array as ia

    shape = (12, 15)

    def make(path: Path) -> Any:
        arr = ia.InfluenceArray.from_function(
            path, values, shape=shape, block_shape=(4, 5), overwrite=True
        )
        arr.fill(progress=False)
        return arr

    path = root / "fn"
    arr = make(path)
    arr.store_path = path
    _finish(arr)
    matrix = values(range(shape[0]), range(shape[1])).astype(np.float32)
    return Base("function", path, lambda p: ia.open(p, fn=values), make, matrix, None, 0.0)


def model_bases(root: Path) -> list[Base]:
    import torch

    import infl_array as ia
    from infl_array.torch import ProjectedInfluence

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    loss = torch.nn.functional.cross_entropy
    infl = ProjectedInfluence(model, loss, 0.1, projection_dim=8).fit((x[:30], y[:30]))
    data = {"test": (x[30:], y[30:]), "train": (x[:30], y[:30])}

    def make(path: Path) -> Any:
        return ia.InfluenceArray.create(path, infl, block_shape=(3, 10), overwrite=True, **data)

    def opener(path: Path) -> Any:
        return ia.open(path, infl, **data)

    full = make(root / "model")
    full.fill(progress=False)
    matrix = np.asarray(full)
    si = np.asarray(full.self_influence())
    full.store_path = root / "model"
    _finish(full)
    part = make(root / "model_part")
    part[:3], part[:, :10]
    part.self_influence()[:]
    part.store_path = root / "model_part"
    _finish(part)
    return [
        Base("model", root / "model", opener, make, matrix, si, 1e-5),
        Base("model, partly filled", root / "model_part", opener, make, matrix, si, 1e-5),
    ]


# ---------------------------------------------------------------------- one fault
def _targets(base: Base, path: Path) -> list[str]:
    return [f for f in files_of(path) if "/claims/" not in f] + ["claim"]


def _plant_claim(path: Path) -> tuple[str, tuple[int, int]]:
    """Delete one matrix chunk and hold its unit with a garbled claim; returns its key."""
    import infl_array as ia
    from infl_array.engine.plan import ClaimUnits
    from infl_array.storage import layout

    arr = ia.open(path)
    stored = [tuple(int(v) for v in c) for c in np.argwhere(arr.computed)]
    i, j = stored[len(stored) // 2]
    (path / layout.MATRIX.chunk_key((i, j))).unlink()
    units = ClaimUnits.for_grid(arr.grid_shape)
    key = layout.MATRIX.claims_prefix + units.name(units.unit_of((i, j)))
    (path / key).parent.mkdir(parents=True, exist_ok=True)
    (path / key).write_bytes(GARBLED_CLAIM)
    return key, (i, j)


def _run_op(op: str, base: Base, path: Path) -> bool:
    """Run ``op`` on the damaged store; whether what it returned is right."""
    import infl_array as ia

    ok = True
    close = base.close
    if op == "read":
        ok = close(np.asarray(base.opener(path)), base.matrix)
    elif op == "fill":
        base.opener(path).fill(progress=False)
        ok = close(np.asarray(ia.open(path)), base.matrix)
    elif op == "top_k":
        ok = close(base.opener(path).top_k(2)[0], base.top_k()[0])
    elif op == "top_k_array":
        tk = base.opener(path).top_k_array(2, axis=1)
        got_v, got_i = np.asarray(tk.values[:]), np.asarray(tk.indices[:])
        want_v, want_i = base.top_k()
        ok = close(got_v, want_v) and np.array_equal(got_i, want_i)
    elif op == "self_influence" and base.self_influence is not None:
        ok = close(np.asarray(base.opener(path).self_influence()), base.self_influence)
    elif op == "verify":
        ok = isinstance(base.opener(path).verify(), list)
    elif op == "report":
        ia.open(path).store_report()
    elif op == "repair":
        base.opener(path).repair()
    return bool(ok)


def _restore(base: Base, path: Path, tally: Tally) -> tuple[set, str]:
    """``repair()`` (or, for a store whose own metadata is gone, recreate it); then the blocks
    stored after the repair, before any fill, and how the store was restored."""
    import infl_array as ia

    try:
        bounded(lambda: base.opener(path).repair())
    except ia.NotAStoreError:
        bounded(lambda: base.recreate(path))  # the group or matrix metadata: a new store
        return set(), "recreated"
    report = bounded(lambda: ia.open(path).store_report())
    if not report.ok:
        tally.fail(f"{base.name} {path.name}: damage left after repair: {report.lines()}")
    return {(int(i), int(j)) for i, j in np.argwhere(ia.open(path).computed)}, "repaired"


def _final_check(base: Base, path: Path, tally: Tally) -> None:
    """Fill the restored store; every block, the top-k array and self-influence are right."""
    arr = base.opener(path)
    bounded(lambda: arr.fill(progress=False))
    stored, wrong = check_blocks(path, base.matrix, base.close)
    g = arr.grid_shape
    tally.blocks_checked += g[0] * g[1]
    tally.blocks_wrong += len(wrong) + (g[0] * g[1] - len(stored))
    tk = bounded(lambda: base.opener(path).top_k_array(2, axis=1))
    want_v, want_i = base.top_k()
    if not base.close(tk.values[:], want_v) or not np.array_equal(tk.indices[:], want_i):
        tally.blocks_wrong += 1
        tally.fail(f"{base.name}: top-k array wrong after restore")
    if base.self_influence is not None:
        si = np.asarray(bounded(lambda: base.opener(path).self_influence()))
        if not np.allclose(si, base.self_influence, rtol=base.rtol, atol=1e-7):
            tally.blocks_wrong += 1
            tally.fail(f"{base.name}: self-influence wrong after restore")


def one_fault(base: Base, work: Path, rng: random.Random, tally: Tally) -> None:
    import infl_array as ia

    path = work / "d"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base.path, path)
    target = rng.choice(_targets(base, path))
    fault = rng.choice(FAULTS)
    before = {(int(i), int(j)) for i, j in np.argwhere(ia.open(path).computed)}
    damaged_block = None
    if target == "claim":
        target, damaged_block = _plant_claim(path)
        fault = "garble"
    else:
        damage_file(path / target, fault)
        parts = target.split("/")
        if parts[0] == "influence" and parts[1] == "c":
            damaged_block = (int(parts[2]), int(parts[3]))
    op = rng.choice(OPS if base.self_influence is not None else OPS[:4] + OPS[5:])
    tally.faults += 1
    kind = (
        target.split("/c/")[0]
        .replace("/zarr.json", " metadata")
        .replace("zarr.json", "group metadata")
    )
    try:
        right = bounded(lambda: _run_op(op, base, path))
        tally.outcomes["right values" if right else "WRONG values"] += 1
        if not right:
            tally.blocks_wrong += 1
            tally.fail(f"{base.name}: {fault} {target}, {op}: wrong values")
    except Hang:
        tally.hangs += 1
        tally.fail(f"{base.name}: {fault} {target}, {op}: hang")
        return
    except Exception as exc:
        if clear_error(exc):
            tally.outcomes[f"clear error: {type(exc).__name__}"] += 1
        else:
            tally.unclear_errors += 1
            tally.fail(f"{base.name}: {fault} {target}, {op}: {type(exc).__name__}: {exc}"[:300])
    try:
        after_repair, how = _restore(base, path, tally)
        if how == "repaired":
            lost = before - after_repair - {damaged_block}
            tally.blocks_lost += len(lost)
            if lost:
                tally.fail(f"{base.name}: {fault} {target}, {op}: lost {sorted(lost)}")
        tally.outcomes[f"store {how}"] += 1
        _final_check(base, path, tally)
    except Hang:
        tally.hangs += 1
        tally.fail(f"{base.name}: {fault} {target}, {op}: hang while restoring")
    except Exception as exc:
        tally.unclear_errors += 1
        tally.fail(f"{base.name}: {fault} {target}, {op}: restore failed: {exc!r}"[:300])
    tally.outcomes[f"target: {kind}"] += 1


def run(n: int, work: Path, rng: random.Random, tally: Tally) -> None:
    """``n`` damaged-chunk faults, about half on the model stores."""
    import infl_array.storage.claims as claims

    ttl = claims.CLAIM_TTL_S
    claims.CLAIM_TTL_S = 1.0  # a garbled claim holds its unit one lifetime: keep it short
    t0 = now()
    try:
        bases = [function_base(work), *model_bases(work)]
        for k in range(n):
            base = bases[0] if rng.random() < 0.5 else rng.choice(bases[1:])
            one_fault(base, work, rng, tally)
            if k % 200 == 199:
                print(f"  damage {k + 1}/{n}: {dict(tally.outcomes)}", flush=True)
    finally:
        claims.CLAIM_TTL_S = ttl  # the later kinds run with the package's lifetime
    tally.seconds += now() - t0
