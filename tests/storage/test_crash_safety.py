"""Crashes and concurrency never lose or falsify a block.

Child processes (:mod:`faultchild`) fill or read a local store and are killed with SIGKILL at
random moments, or kill themselves at the most delicate points of a block write (half the bytes
written; all bytes written but not yet renamed). After every kill each block in the store must
decode, pass ``verify()`` and hold exactly the expected values, and a new ``fill()`` must
compute exactly the missing blocks. Fillers and a reader running at once see only complete,
correct blocks; temporary files of block writes are removed only once no writer can be alive.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faultchild
import numpy as np
import psutil
import pytest
from faults import (
    EXPECTED,
    GRID,
    N_BLOCKS,
    TIMEOUT_S,
    block_sel,
    check_store_after_crash,
    chunk_files,
    claim_partials,
    new_store,
    partial_files,
    refill_computes_exactly,
)
from helpers import CountingFn

import infl_array as ia
from infl_array.storage.grid import PARTIAL_MIN_AGE_S
from infl_array.storage.store import InfluenceStore

CHILD_DIR = Path(faultchild.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]


def spawn(cmd: str, store: str, log: Path, **opts: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CHILD_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "import faultchild; faultchild.main()", cmd, store,
             json.dumps(opts)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: killpg reaches its workers too
        )  # fmt: skip


def wait_until(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while not cond():
        if proc is not None and proc.poll() is not None:
            output = log.read_text() if log is not None else ""
            raise AssertionError(f"child exited ({proc.returncode}) before {what}:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def kill_group(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """SIGKILL the child and everything it started; wait until all of them are dead."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    wait_until(lambda: not any(_alive(p) for p in descendants), "the child's workers to die")
    return descendants


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------- crash safety
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_loses_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    proc = spawn("fill", str(store), log, delay=0.01)
    at_least = rng.randint(1, 30)
    wait_until(lambda: len(chunk_files(store)) >= at_least, f"{at_least} blocks", proc, log)
    time.sleep(rng.uniform(0.0, 0.015))  # the kill point: any moment after that
    kill_group(proc)
    missing = check_store_after_crash(store)
    assert 0 < len(missing) <= N_BLOCKS - at_least
    refill_computes_exactly(store, missing)


@pytest.mark.parametrize(
    ("mode", "url"),
    [("mid-write", False), ("mid-write", True), ("before-rename", False)],
    ids=["half-written", "half-written-file-url", "written-not-renamed"],
)
def test_sigkill_inside_a_block_write(tmp_path: Path, mode: str, url: bool) -> None:
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    spec = f"file://{store}" if url else str(store)
    proc = spawn("fill", spec, log, delay=0.0, inject=mode, nth=8)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL, log.read_text()
    # the fill died writing its 8th block file; a run of blocks is written with one zarr
    # call, its chunks concurrently, so other files of the run may have been open beside it
    partials = partial_files(store)
    assert partials
    sizes = [p.stat().st_size for p in partials]
    missing = check_store_after_crash(store)  # every stored block is complete and right
    being_written = {(int(p.parent.name), int(p.name.split(".")[0])) for p in partials}
    assert being_written <= set(missing)
    # a fresh temporary file may be a live writer's: fill leaves it, never counts it
    refill_computes_exactly(spec, missing)
    assert partial_files(store) == partials
    full_size = min(f.stat().st_size for f in chunk_files(store))
    # the killed one is half written (or written whole but not renamed)
    assert min(sizes) < full_size if mode == "mid-write" else max(sizes) > 0
    # once no writer can be alive it is removed
    claims = claim_partials(store)  # the fill may have been writing a claim when it died
    removed = InfluenceStore.open(store).matrix.clean_partials(min_age_s=0)
    assert removed == len(partials) + len(claims)
    assert partial_files(store) == [] and claim_partials(store) == []
    np.testing.assert_array_equal(np.asarray(ia.open(spec)), EXPECTED)


def test_sigkill_of_a_process_pool_fill(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    proc = spawn("fill", str(store), log, delay=0.02, workers=2)
    at_least = rng.randint(2, 16)
    wait_until(lambda: len(chunk_files(store)) >= at_least, f"{at_least} blocks", proc, log)
    time.sleep(rng.uniform(0.0, 0.02))
    killed = kill_group(proc)
    assert len(killed) >= 2  # the two workers (and multiprocessing's helpers) died too
    missing = check_store_after_crash(store)
    assert 0 < len(missing) <= N_BLOCKS - at_least
    refill_computes_exactly(store, missing)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_fillers_and_a_reader(tmp_path: Path) -> None:
    store = tmp_path / "store"
    new_store(store)
    go, stop = tmp_path / "go", tmp_path / "stop"
    reader_log = tmp_path / "reader.log"
    reader = spawn("read", str(store), reader_log, seed=3, go=str(go), stop=str(stop),
        timeout=TIMEOUT_S,
    )  # fmt: skip
    fillers = [
        spawn("fill", str(store), tmp_path / f"filler{k}.log", delay=0.01,
              go=str(go), shuffle=k)
        for k in range(3)
    ]  # fmt: skip
    for k, proc in enumerate(fillers):
        assert proc.wait(timeout=TIMEOUT_S) == 0, (tmp_path / f"filler{k}.log").read_text()
    stop.touch()
    assert reader.wait(timeout=TIMEOUT_S) == 0, reader_log.read_text()
    stats = json.loads(reader_log.read_text().strip().splitlines()[-1])
    assert stats["wrong"] == [] and stats["errors"] == []
    assert stats["missing"] > 0 and stats["ok"] > 0  # it saw the store empty and filled
    assert stats["raw_empty"] > 0 and stats["raw_complete"] > 0
    computed = [
        json.loads((tmp_path / f"filler{k}.log").read_text().strip().splitlines()[-1])
        for k in range(3)
    ]
    assert sum(c["computed"] for c in computed) >= N_BLOCKS
    assert partial_files(store) == []
    refill_computes_exactly(store, set())


# ---------------------------------------------------------------------- temporary files
def test_clean_partials_removes_only_abandoned_files(tmp_path: Path) -> None:
    store = tmp_path / "store"
    arr = new_store(store)
    arr[:5, :]  # block row 0
    row0, row3 = store / "influence" / "c" / "0", store / "influence" / "c" / "3"
    row3.mkdir(parents=True)
    fresh = row0 / f"2.{'a' * 32}.partial"
    old = row3 / f"4.{'b' * 32}.partial"
    older_meta = store / f"zarr.json.{'c' * 32}.partial"  # not a block file: not ours to judge
    foreign = row3 / "notes.partial"
    (store / "influence" / "claims").mkdir(exist_ok=True)
    old_claim = store / "influence" / "claims" / f"factors.train.3.{'d' * 32}.partial"
    for p in (fresh, old, older_meta, foreign, old_claim):
        p.write_bytes(b"half a block")
    long_ago = time.time() - PARTIAL_MIN_AGE_S - 60
    for p in (old, older_meta, foreign, old_claim):
        os.utime(p, (long_ago, long_ago))
    before = arr.computed.copy()
    assert before.sum() == GRID[1] and not before[3, 4]
    assert arr.verify() == []
    fn = CountingFn(EXPECTED)
    reopened = ia.open(store, fn=fn)
    assert reopened.fill(progress=False) == N_BLOCKS - GRID[1]
    assert len(fn.calls) == N_BLOCKS - GRID[1]
    assert fresh.exists() and not old.exists() and not old_claim.exists()
    assert older_meta.exists() and foreign.exists()
    assert (
        InfluenceStore.open(store).matrix.clean_partials() == 0
    )  # the fresh one is still too young
    assert InfluenceStore.open(store, read_only=True).matrix.clean_partials(min_age_s=0) == 0
    assert InfluenceStore.open(store).matrix.clean_partials(min_age_s=0) == 1
    assert not fresh.exists()
    np.testing.assert_array_equal(np.asarray(ia.open(store)), EXPECTED)


def test_partial_files_are_never_counted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    arr = new_store(store)
    arr[0, 0]
    stored = ia.open(store).stored_bytes()
    for i, j in [(0, 1), (2, 3), (7, 5)]:
        d = store / "influence" / "c" / str(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{j}.{os.urandom(16).hex()}.partial").write_bytes(os.urandom(100))
    ro = ia.open(store)
    assert np.argwhere(ro.computed).tolist() == [[0, 0]]
    assert ro.missing_blocks() == [b for b in np.ndindex(GRID) if b != (0, 0)]
    assert ia.open(store).stored_bytes() == stored
    assert ro.verify() == []
    assert "1/48" in repr(ro)
    with pytest.raises(ia.MissingBlockError, match=r"\(2, 3\)"):
        ro[block_sel((2, 3))]
