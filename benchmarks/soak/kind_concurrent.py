"""Fault kind "concurrent kill" of the soak (``soak.py``): SIGKILL concurrent fillers at random
moments, read along the way, check every block.

Each trial creates a store (a random block shape over a fixed matrix), starts a read-only reader
process and several filler processes on it (each filler computes the blocks in its own random
order, then ``fill()``; some trials also make one filler kill itself half-way through writing a
block, or after writing it but before renaming it), and SIGKILLs every filler at a random moment.
Then, while the reader keeps reading:

* every block in the store must decode, pass ``verify()`` and equal the expected values;
* every block the reader ever saw complete must still be there (else it was lost);
* ``ia.open(store, fn=...).fill()`` must compute exactly the missing blocks, and the whole matrix
  must equal the expected one.

The reader checks each slice it reads (correct, or ``MissingBlockError``) and whole raw blocks
read with plain zarr (all NaN, or exactly correct); the processes are in ``soak_procs.py``.
``soak.py`` runs the trials (:func:`run_trial`) and reports them with the other fault kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import ROOT
from soak_procs import SHAPE, TIMEOUT_S, block_sel, expected, grid_of, values

BLOCK_SHAPES = [(6, 10), (8, 6), (5, 7), (12, 12), (7, 11)]
PROCS = Path(__file__).resolve().parent / "soak_procs.py"


class CountingFn:
    """The block function of the refill: ``values``, recording which blocks it computed."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        self.calls.append((rows.start, cols.start))
        return values(rows, cols)


def spawn(cmd: str, store: Path, opts: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    """Start ``soak_procs.py cmd store opts`` in its own session, output to ``log``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(PROCS), cmd, str(store), json.dumps(opts)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def chunk_count(store: Path) -> int:
    base = store / "influence" / "c"
    return sum(1 for p in base.glob("*/*") if p.name.isdigit()) if base.exists() else 0


# ---------------------------------------------------------------------- one trial
@dataclass
class Trial:
    """A running trial: its folder, store, block shape and processes."""

    number: int
    tdir: Path
    block: tuple[int, int]
    reader: subprocess.Popen[bytes]
    fillers: list[subprocess.Popen[bytes]]
    injected: str | None

    @property
    def store(self) -> Path:
        return self.tdir / "store"

    def marker(self, name: str) -> Path:
        return self.tdir / name


def start_trial(number: int, rng: random.Random, work: Path, args: argparse.Namespace) -> Trial:
    """An empty store with a random block shape, its reader and its fillers (waiting for go)."""
    import infl_array as ia

    block = rng.choice(BLOCK_SHAPES)
    grid = grid_of(block)
    tdir = work / f"trial{number:03d}"
    tdir.mkdir()
    ia.InfluenceArray.from_function(tdir / "store", CountingFn(), shape=SHAPE, block_shape=block)
    go = str(tdir / "go")
    reader_opts = {
        "seed": number,
        "block": block,
        "go": go,
        "stop": str(tdir / "stop"),
        "killed": str(tdir / "killed"),
    }
    reader = spawn("read", tdir / "store", reader_opts, tdir / "reader.log")
    injected = rng.choice([None, None, "mid-write", "before-rename"])
    fillers = []
    for k in range(args.fillers):
        opts: dict[str, Any] = {"delay": args.delay, "seed": rng.randrange(1 << 30), "go": go}
        if k == 0 and injected:
            opts.update(inject=injected, nth=rng.randint(1, grid[0] * grid[1] // 2))
        fillers.append(spawn("fill", tdir / "store", opts, tdir / f"filler{k}.log"))
    return Trial(number, tdir, block, reader, fillers, injected)


def kill_fillers(trial: Trial, kill_at: int, extra: float) -> tuple[int, int, list[int]]:
    """SIGKILL every filler once ``kill_at`` blocks are stored plus ``extra`` seconds.

    Returns (fillers killed, 1 if the injected filler had killed itself, failed exit codes).
    """
    deadline = time.monotonic() + TIMEOUT_S
    fillers = trial.fillers
    while chunk_count(trial.store) < kill_at and any(f.poll() is None for f in fillers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"trial {trial.number}: fillers made no progress")
        time.sleep(0.001)
    time.sleep(extra)
    before_kill = [f.poll() for f in fillers]
    killed = 0
    for f, rc in zip(fillers, before_kill, strict=True):
        if rc is None:
            os.killpg(f.pid, signal.SIGKILL)
            killed += 1
        f.wait(timeout=TIMEOUT_S)
    trial.marker("killed").touch()  # every filler is dead
    failed = [f.returncode for f in fillers if f.returncode not in (0, -signal.SIGKILL)]
    self_killed = int(trial.injected is not None and before_kill[0] == -signal.SIGKILL)
    return killed, self_killed, failed


def check_blocks(trial: Trial) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(blocks in the store, blocks wrong): each stored block must pass ``verify()`` and equal
    the expected values; each missing block must read as all NaN."""
    import zarr

    import infl_array as ia

    full, block = expected(), trial.block
    grid = grid_of(block)
    ro = ia.open(trial.store)
    computed = {(int(i), int(j)) for i, j in np.argwhere(ro.computed)}
    bad = set(ro.verify())
    raw = zarr.open_array(trial.store / "influence", mode="r")
    wrong = set(bad)
    for i in range(grid[0]):
        for j in range(grid[1]):
            sel = block_sel((i, j), block)
            got = raw[sel] if (i, j) not in bad else None
            if (i, j) in computed:
                if got is None or not np.array_equal(got, full[sel]):
                    wrong.add((i, j))
            elif got is not None and not np.isnan(got).all():
                wrong.add((i, j))
    return computed, wrong


def refill(trial: Trial, missing: int) -> tuple[bool, bool, int]:
    """``fill()`` with a counting function: (computed exactly the missing blocks, final matrix
    correct, partial files cleaned afterwards)."""
    import infl_array as ia
    from infl_array.storage.store import InfluenceStore

    fn = CountingFn()
    arr = ia.open(trial.store, fn=fn)
    refilled = arr.fill(progress=False)
    exact = refilled == missing and len(fn.calls) == missing
    final_ok = np.array_equal(np.asarray(arr), expected()) and arr.verify() == []
    # every writer is dead now: no partial file can belong to a live one
    cleaned = InfluenceStore.open(trial.store).matrix.clean_partials(min_age_s=0)
    return exact, final_ok, cleaned


def reader_result(trial: Trial) -> dict[str, Any]:
    trial.marker("stop").touch()
    trial.reader.wait(timeout=TIMEOUT_S * 3)
    lines = (trial.tdir / "reader.log").read_text().strip().splitlines()
    try:
        out: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"errors": ["reader failed: " + "\n".join(lines[-5:])], "wrong": [], "seen": []}
    return out


def run_trial(number: int, rng: random.Random, work: Path, args: argparse.Namespace) -> dict:
    trial = start_trial(number, rng, work, args)
    grid = grid_of(trial.block)
    n_blocks = grid[0] * grid[1]
    kill_at = rng.randint(0, int(0.7 * n_blocks))
    killed, self_killed, failed = kill_fillers(trial, kill_at, rng.uniform(0.0, 3 * args.delay))
    computed, wrong = check_blocks(trial)
    partials = len(list(trial.store.rglob("*.partial")))
    # refill computes exactly what is missing, while the reader keeps reading
    refill_exact, final_ok, cleaned = refill(trial, n_blocks - len(computed))
    rstats = reader_result(trial)
    lost = {tuple(c) for c in rstats.get("seen", [])} - computed
    result = {
        "trial": number,
        "block_shape": trial.block,
        "blocks": n_blocks,
        "kill_at": kill_at,
        "killed": killed,
        "self_killed": self_killed,
        "computed_at_kill": len(computed),
        "blocks_checked": n_blocks * 2,  # after the kill and after the refill
        "wrong": len(wrong),
        "lost": len(lost),
        "refill_exact": refill_exact,
        "final_ok": final_ok,
        "partials_left": partials,
        "partials_cleaned": cleaned,
        "filler_failures": failed,
        "reader": {k: rstats.get(k, 0) for k in ("ok", "missing", "raw_complete", "raw_empty")},
        "reader_wrong": len(rstats.get("wrong", [])),
        "reader_errors": rstats.get("errors", [])[:3],
    }
    shutil.rmtree(trial.tdir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------- the soak
def is_ok(r: dict[str, Any]) -> bool:
    failed = r["wrong"] or r["lost"] or r["reader_wrong"] or r["reader_errors"]
    return not failed and r["refill_exact"] and r["final_ok"] and not r["filler_failures"]
