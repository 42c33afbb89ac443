"""Fault kinds "killed filler" and "killed worker": SIGKILL at a random moment.

- *killed filler*: one or two filler processes (forked from a server that has imported
  infl_array, so a start costs milliseconds) fill a small ``from_function`` store (24 x 30,
  blocks 4 x 5: 36 blocks, a few ms each), or its top-k array, some killing themselves inside
  a block write (half the bytes written, or written but not renamed); each is SIGKILLed after a
  random delay. Each kill is a fault.
- *killed worker*: ``fill(workers=2)`` in a filler process; one of its worker processes (or the
  filler itself) is SIGKILLed once a random share of the blocks is stored.

After the kills, every block in the store must decode and equal the reference, none stored at
the kill may be lost, a new ``fill()`` must compute exactly the missing blocks, and the whole
matrix (and top-k array) must equal the reference. Every step has a time bound.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from soak_common import STEP_S, Tally, bounded, check_blocks, now, reference

SHAPE, BLOCK = (24, 30), (4, 5)
HERE = Path(__file__).resolve().parent


def _child_fill(store: str, opts: dict[str, Any]) -> None:
    """A forked filler: random block order, then ``fill()`` (or the top-k array's fill)."""
    from soak_fns import slow_values
    from soak_procs import inject

    import infl_array as ia

    if opts.get("inject"):
        inject(opts["inject"], opts["nth"])
    arr = ia.open(store, fn=slow_values)
    if opts.get("top_k"):
        arr.top_k_array(2, axis=1).fill(progress=False)
        return
    blocks = [(i, j) for i in range(arr.grid_shape[0]) for j in range(arr.grid_shape[1])]
    random.Random(opts["seed"]).shuffle(blocks)
    for b in blocks[: len(blocks) // 2]:
        arr.read_block(b)
    arr.fill(progress=False)


def _stored(store: Path) -> set[tuple[int, int]]:
    import infl_array as ia

    return {(int(i), int(j)) for i, j in np.argwhere(ia.open(store).computed)}


def _check_and_refill(store: Path, tally: Tally, at_kill: set, label: str) -> None:
    """Blocks right, none lost, a refill computes exactly the missing ones, all right."""
    import infl_array as ia
    from infl_array.storage.store import InfluenceStore

    expected = reference(SHAPE)
    stored, wrong = check_blocks(store, expected)
    lost = at_kill - stored
    n_blocks = (SHAPE[0] // BLOCK[0]) * (SHAPE[1] // BLOCK[1])
    tally.blocks_checked += 2 * n_blocks
    tally.blocks_wrong += len(wrong)
    tally.blocks_lost += len(lost)
    if wrong or lost:
        tally.fail(f"{label}: wrong {sorted(wrong)} lost {sorted(lost)}")
    calls: list[Any] = []

    def counting(rows: range, cols: range) -> np.ndarray:
        calls.append((rows.start, cols.start))
        return expected[rows.start : rows.stop, cols.start : cols.stop].astype(np.float64)

    arr = ia.open(store, fn=counting)
    refilled = bounded(lambda: arr.fill(progress=False))
    if refilled != n_blocks - len(stored) or len(calls) != refilled:
        tally.fail(f"{label}: refill computed {len(calls)} blocks for {n_blocks - len(stored)}")
        tally.blocks_wrong += abs(len(calls) - (n_blocks - len(stored)))
    final = bounded(lambda: np.asarray(ia.open(store)))
    if not np.array_equal(final, expected) or arr.verify():
        tally.blocks_wrong += 1
        tally.fail(f"{label}: final matrix wrong")
    tk = bounded(lambda: ia.open(store, fn=counting).top_k_array(2, axis=1))
    want = np.argsort(-expected, axis=1, kind="stable")[:, :2]
    if not np.array_equal(bounded(lambda: tk.indices[:]), want):
        tally.blocks_wrong += 1
        tally.fail(f"{label}: top-k array wrong")
    InfluenceStore.open(store).matrix.clean_partials(min_age_s=0)


def _new_store(path: Path) -> None:
    from soak_fns import slow_values

    import infl_array as ia

    ia.InfluenceArray.from_function(path, slow_values, shape=SHAPE, block_shape=BLOCK)


def run_fillers(n_trials: int, work: Path, rng: random.Random, tally: Tally) -> None:
    """Trials of 1-4 rounds of one or two forked fillers, each SIGKILLed at a random moment;
    after each round the stored blocks are checked (right, none lost), after the last the
    refill."""
    t0 = now()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["infl_array", "soak_fns", "soak_procs", "kind_kill"])
    for trial in range(n_trials):
        store = work / f"kill{trial}"
        _new_store(store)
        at_kill: set[tuple[int, int]] = set()
        try:
            for _ in range(rng.randint(1, 4)):
                _kill_round(ctx, store, rng, tally)
                stored, wrong = check_blocks(store, reference(SHAPE))
                lost = at_kill - stored
                tally.blocks_checked += (SHAPE[0] // BLOCK[0]) * (SHAPE[1] // BLOCK[1])
                tally.blocks_wrong += len(wrong)
                tally.blocks_lost += len(lost)
                if wrong or lost:
                    tally.fail(f"filler trial {trial}: wrong {sorted(wrong)} lost {sorted(lost)}")
                at_kill = stored
            _check_and_refill(store, tally, at_kill, f"filler trial {trial}")
        except Exception as exc:
            tally.unclear_errors += 1
            tally.fail(f"filler trial {trial}: {exc!r}"[:300])
        _rm(store)
        if trial % 50 == 49:
            print(f"  filler kill trials {trial + 1}/{n_trials}: {tally.faults}", flush=True)
    tally.seconds += now() - t0


def _kill_round(ctx: Any, store: Path, rng: random.Random, tally: Tally) -> None:
    """One or two forked fillers on ``store``, SIGKILLed after a random delay."""
    procs = []
    for k in range(rng.choice((1, 1, 2))):
        opts: dict[str, Any] = {"seed": rng.randrange(1 << 30), "top_k": rng.random() < 0.2}
        if k == 0 and rng.random() < 0.3:
            opts.update(inject=rng.choice(["mid-write", "before-rename"]), nth=rng.randint(1, 4))
        p = ctx.Process(target=_child_fill, args=(str(store), opts), daemon=True)
        p.start()
        procs.append((p, opts))
    time.sleep(rng.uniform(0.0, 0.25))
    for p, opts in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            tally.faults += 1
            tally.outcomes["filler SIGKILLed"] += 1
        elif p.exitcode == -signal.SIGKILL:  # killed itself inside a block write
            tally.faults += 1
            tally.outcomes[f"filler killed itself {opts['inject']}"] += 1
        else:
            tally.outcomes[f"filler ended by itself (exit {p.exitcode})"] += 1
        p.join(STEP_S)
        if p.is_alive():
            tally.hangs += 1


def _workers(pid: int) -> list[int]:
    """The worker processes of the filler ``pid`` (not its resource tracker)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = []
    for child in map(int, text.split()):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"--multiprocessing-fork" in cmd and b"resource_tracker" not in cmd:
            found.append(child)
    return found


def run_workers(n_trials: int, work: Path, rng: random.Random, tally: Tally) -> None:
    """Trials of ``fill(workers=2)`` whose worker (or filler) is SIGKILLed mid-fill."""
    t0 = now()
    env = dict(os.environ, SOAK_BLOCK_DELAY="0.02")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parents[1]), env.get("PYTHONPATH", "")]
    )
    n_blocks = (SHAPE[0] // BLOCK[0]) * (SHAPE[1] // BLOCK[1])
    for trial in range(n_trials):
        store = work / f"workers{trial}"
        _new_store(store)
        cmd = [sys.executable, str(HERE / "soak_workers.py"), str(store)]
        filler = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        share = rng.uniform(0.05, 0.8)
        deadline = time.monotonic() + STEP_S
        while len(_stored(store)) < share * n_blocks and filler.poll() is None:
            if time.monotonic() > deadline:
                tally.hangs += 1
                break
            time.sleep(0.02)
        workers = _workers(filler.pid)
        victim = "filler"
        if workers and rng.random() < 0.75:
            os.kill(rng.choice(workers), signal.SIGKILL)
            victim = "worker"
        elif filler.poll() is None:
            os.kill(filler.pid, signal.SIGKILL)
        else:
            victim = "none (the fill ended first)"
        try:
            out, _ = filler.communicate(timeout=STEP_S)
        except subprocess.TimeoutExpired:
            tally.hangs += 1
            filler.kill()
            out, _ = filler.communicate()
        text = out.decode(errors="replace")
        tally.faults += victim != "none (the fill ended first)"
        tally.outcomes[f"{victim} SIGKILLed"] += 1
        if victim == "worker" and filler.returncode != 0:
            clear = "worker process died" in text
            tally.outcomes["fill raised: a worker process died" if clear else "fill failed"] += 1
            if not clear:
                tally.unclear_errors += 1
                tally.fail(f"worker trial {trial}: {text[-300:]}")
        for pid in workers:  # none may outlive the fill
            if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
                tally.outcomes["worker outlived its filler"] += 1
        at_kill = _stored(store)
        try:
            _check_and_refill(store, tally, at_kill, f"worker trial {trial}")
        except Exception as exc:
            tally.unclear_errors += 1
            tally.fail(f"worker trial {trial}: {exc!r}"[:300])
        _rm(store)
    tally.seconds += now() - t0


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
