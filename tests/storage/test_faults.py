"""Fault injection: crashes, corruption, concurrency and bad input never lose or falsify a block.

Child processes fill (or read) a local store and are killed with SIGKILL at random moments, or
kill themselves at the most delicate points of a block write (half the bytes written; all bytes
written but not yet renamed). After every kill each block in the store must decode, pass
``verify()`` and hold exactly the expected values, and a new ``fill()`` must compute exactly the
missing blocks. The child's code is written to a module in a temporary directory, so spawned
worker processes can import its block function.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zarr
from helpers import CountingFn
from zarr.storage import LocalStore

import infl_array as ia
from infl_array.storage.grid import PARTIAL_MIN_AGE_S
from infl_array.storage.store import InfluenceStore

REPO = Path(__file__).resolve().parents[2]

CHILD_SOURCE = textwrap.dedent(
    '''
    """Child of tests/storage/test_faults.py: fills or reads a store, maybe killing itself."""
    import json, os, pathlib, random, signal, sys, time

    import numpy as np

    SHAPE = (40, 36)
    BLOCK = (5, 6)
    GRID = (8, 6)


    def values(rows, cols):
        i = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
        j = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
        return np.sin(0.37 * i + 0.11 * j) * (1.0 + i) + 1e-3 * j


    def expected():
        return values(range(SHAPE[0]), range(SHAPE[1])).astype(np.float32)


    class SlowFn:
        """The block function: ``values`` after a short sleep (picklable for workers)."""

        def __init__(self, delay):
            self.delay = delay

        def __call__(self, rows, cols):
            time.sleep(self.delay)
            return values(rows, cols)


    def _die():
        os.kill(os.getpid(), signal.SIGKILL)


    def _is_block_tmp(path):
        return path.name.endswith(".partial") and "/c/" in path.as_posix()


    def inject(mode, nth):
        """Kill this process while writing the nth block file (see the module docstring)."""
        count = [0]
        if mode == "mid-write":
            real_open = pathlib.Path.open

            class HalfWriter:
                def __init__(self, f):
                    self.f = f

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    self.f.close()
                    return False

                def write(self, data):
                    data = bytes(memoryview(data))
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    _die()

            def patched_open(self, mode="r", *args, **kwargs):
                f = real_open(self, mode, *args, **kwargs)
                if "w" in mode and _is_block_tmp(self):
                    count[0] += 1
                    if count[0] == nth:
                        return HalfWriter(f)
                return f

            pathlib.Path.open = patched_open
        elif mode == "before-rename":
            real_replace = pathlib.Path.replace

            def patched_replace(self, target):
                if _is_block_tmp(self):
                    count[0] += 1
                    if count[0] == nth:
                        _die()
                return real_replace(self, target)

            pathlib.Path.replace = patched_replace
        else:
            raise ValueError(mode)


    def _wait_for(path, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not pathlib.Path(path).exists():
            if time.monotonic() > deadline:
                sys.exit("gave up waiting for " + path)
            time.sleep(0.001)


    def fill(store, opts):
        import infl_array as ia

        if opts.get("inject"):
            inject(opts["inject"], opts["nth"])
        if opts.get("go"):
            _wait_for(opts["go"])
        arr = ia.open(store, fn=SlowFn(opts["delay"]))
        if opts.get("shuffle") is not None:
            blocks = [(i, j) for i in range(GRID[0]) for j in range(GRID[1])]
            random.Random(opts["shuffle"]).shuffle(blocks)
            for b in blocks[: len(blocks) // 2]:
                arr.read_block(b)
        arr.fill(progress=False, workers=opts.get("workers"))
        print(json.dumps({"computed": arr.stats.blocks_computed}))


    def read(store, opts):
        """Read random slices and whole raw blocks until told to stop; report what was seen."""
        import zarr

        import infl_array as ia

        full = expected()
        arr = ia.open(store)
        root = store[len("file://"):] if store.startswith("file://") else store
        raw = zarr.open_array(os.path.join(root, "influence"), mode="r")
        rng = random.Random(opts["seed"])
        stats = {"ok": 0, "missing": 0, "raw_complete": 0, "raw_empty": 0, "wrong": [],
                 "errors": []}
        pathlib.Path(opts["go"]).touch()
        stop = pathlib.Path(opts["stop"])
        deadline = time.monotonic() + opts["timeout"]
        after_stop = 0
        while time.monotonic() < deadline and after_stop < 30:
            after_stop += stop.exists()
            r0 = rng.randrange(SHAPE[0])
            r1 = rng.randrange(r0 + 1, min(SHAPE[0], r0 + 9) + 1)
            c0 = rng.randrange(SHAPE[1])
            c1 = rng.randrange(c0 + 1, min(SHAPE[1], c0 + 10) + 1)
            try:
                got = arr[r0:r1, c0:c1]
            except ia.MissingBlockError:
                stats["missing"] += 1
            except Exception as exc:
                stats["errors"].append(repr(exc))
            else:
                if np.array_equal(got, full[r0:r1, c0:c1]):
                    stats["ok"] += 1
                else:
                    stats["wrong"].append([r0, r1, c0, c1])
            i, j = rng.randrange(GRID[0]), rng.randrange(GRID[1])
            sel = (slice(i * BLOCK[0], (i + 1) * BLOCK[0]), slice(j * BLOCK[1], (j + 1) * BLOCK[1]))
            try:
                block = raw[sel]
            except Exception as exc:
                stats["errors"].append("raw zarr: " + repr(exc))
                continue
            if np.isnan(block).all():
                stats["raw_empty"] += 1
            elif np.array_equal(block, full[sel]):
                stats["raw_complete"] += 1
            else:
                stats["wrong"].append(["raw", i, j])
        print(json.dumps(stats))


    def main():
        cmd, store, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        {"fill": fill, "read": read}[cmd](store, opts)
    '''
)

CHILD: dict[str, Any] = {}
exec(compile(CHILD_SOURCE, "faultchild.py", "exec"), CHILD)
SHAPE: tuple[int, int] = CHILD["SHAPE"]
BLOCK: tuple[int, int] = CHILD["BLOCK"]
GRID: tuple[int, int] = CHILD["GRID"]
EXPECTED: np.ndarray = CHILD["expected"]()
N_BLOCKS = GRID[0] * GRID[1]
TIMEOUT_S = 120.0  # generous limit for any wait on a child process


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def child_dir(tmp_path: Path) -> Path:
    d = tmp_path / "child"
    d.mkdir()
    (d / "faultchild.py").write_text(CHILD_SOURCE)
    return d


def new_store(path: Path) -> ia.InfluenceArray:
    return ia.InfluenceArray.from_function(
        path, CountingFn(EXPECTED), shape=SHAPE, block_shape=BLOCK
    )


def spawn(child_dir: Path, cmd: str, store: str, log: Path, **opts: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(child_dir), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
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


def chunk_files(store: Path) -> list[Path]:
    base = store / "influence" / "c"
    return sorted(p for p in base.glob("*/*") if p.name.isdigit()) if base.exists() else []


def partial_files(store: Path) -> list[Path]:
    """Temporary files of block writes (a claim written meanwhile may leave one too)."""
    return sorted(p for p in store.rglob("*.partial") if "/c/" in p.as_posix())


def claim_partials(store: Path) -> list[Path]:
    return sorted((store / "influence" / "claims").glob("*.partial"))


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


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


def block_of(call: tuple[int, int, int, int]) -> tuple[int, int]:
    return (call[0] // BLOCK[0], call[2] // BLOCK[1])


def block_sel(coords: tuple[int, int]) -> tuple[slice, slice]:
    i, j = coords
    return slice(i * BLOCK[0], (i + 1) * BLOCK[0]), slice(j * BLOCK[1], (j + 1) * BLOCK[1])


def check_store_after_crash(store: Path) -> set[tuple[int, int]]:
    """Every stored block is complete and correct; returns the blocks that are missing."""
    ro = ia.open(store)
    computed = {(int(i), int(j)) for i, j in np.argwhere(ro.computed)}
    assert computed == {(int(p.parent.name), int(p.name)) for p in chunk_files(store)}
    assert ro.verify() == []
    raw = zarr.open_array(store / "influence", mode="r")
    for i in range(GRID[0]):
        for j in range(GRID[1]):
            sel = block_sel((i, j))
            if (i, j) in computed:
                np.testing.assert_array_equal(ro.read_block((i, j)), EXPECTED[sel])
                np.testing.assert_array_equal(raw[sel], EXPECTED[sel])
            else:
                assert np.isnan(raw[sel]).all()
    return {(i, j) for i in range(GRID[0]) for j in range(GRID[1])} - computed


def refill_computes_exactly(store: Path | str, missing: set[tuple[int, int]]) -> None:
    fn = CountingFn(EXPECTED)
    arr = ia.open(store, fn=fn)
    assert arr.fill(progress=False) == len(missing)
    assert sorted(block_of(c) for c in fn.calls) == sorted(missing)
    np.testing.assert_array_equal(np.asarray(arr), EXPECTED)
    assert arr.verify() == []
    assert arr.fill(progress=False) == 0


# ---------------------------------------------------------------------- crash safety
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_loses_nothing(
    tmp_path: Path, child_dir: Path, seed: int
) -> None:
    rng = random.Random(seed)
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    proc = spawn(child_dir, "fill", str(store), log, delay=0.01)
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
def test_sigkill_inside_a_block_write(
    tmp_path: Path, child_dir: Path, mode: str, url: bool
) -> None:
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    spec = f"file://{store}" if url else str(store)
    proc = spawn(child_dir, "fill", spec, log, delay=0.0, inject=mode, nth=8)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL, log.read_text()
    # blocks are filled row-major: 7 complete, the 8th (1, 1) died in the write
    [partial] = partial_files(store)
    assert partial.parent.name == "1" and partial.name.startswith("1.")
    size = partial.stat().st_size
    full_size = (store / "influence" / "c" / "1" / "0").stat().st_size
    assert (size < full_size) if mode == "mid-write" else (size > 0)
    missing = check_store_after_crash(store)
    assert len(missing) == N_BLOCKS - 7 and (1, 1) in missing
    # a fresh temporary file may be a live writer's: fill leaves it, never counts it
    refill_computes_exactly(spec, missing)
    assert partial_files(store) == [partial]
    # once no writer can be alive it is removed
    claims = claim_partials(store)  # the fill may have been writing a claim when it died
    assert InfluenceStore.open(store).matrix.clean_partials(min_age_s=0) == 1 + len(claims)
    assert partial_files(store) == [] and claim_partials(store) == []
    np.testing.assert_array_equal(np.asarray(ia.open(spec)), EXPECTED)


def test_sigkill_of_a_process_pool_fill(tmp_path: Path, child_dir: Path) -> None:
    rng = random.Random(7)
    store = tmp_path / "store"
    new_store(store)
    log = tmp_path / "child.log"
    proc = spawn(child_dir, "fill", str(store), log, delay=0.02, workers=2)
    at_least = rng.randint(2, 16)
    wait_until(lambda: len(chunk_files(store)) >= at_least, f"{at_least} blocks", proc, log)
    time.sleep(rng.uniform(0.0, 0.02))
    killed = kill_group(proc)
    assert len(killed) >= 2  # the two workers (and multiprocessing's helpers) died too
    missing = check_store_after_crash(store)
    assert 0 < len(missing) <= N_BLOCKS - at_least
    refill_computes_exactly(store, missing)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_fillers_and_a_reader(tmp_path: Path, child_dir: Path) -> None:
    store = tmp_path / "store"
    new_store(store)
    go, stop = tmp_path / "go", tmp_path / "stop"
    reader_log = tmp_path / "reader.log"
    reader = spawn(
        child_dir, "read", str(store), reader_log, seed=3, go=str(go), stop=str(stop),
        timeout=TIMEOUT_S,
    )  # fmt: skip
    fillers = [
        spawn(child_dir, "fill", str(store), tmp_path / f"filler{k}.log", delay=0.01,
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


# ---------------------------------------------------------------------- bad input
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
        return CHILD["values"](rows, cols)

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
