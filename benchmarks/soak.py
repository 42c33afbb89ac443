"""Soak test: SIGKILL concurrent fillers at random moments, read along the way, check every block.

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
read with plain zarr (all NaN, or exactly correct). Results are printed and written to the
section "Soak: kill and concurrency" of ``benchmarks/RESULTS.md`` (other sections are kept).

    python benchmarks/soak.py --trials 60 --fillers 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (48, 60)
BLOCK_SHAPES = [(6, 10), (8, 6), (5, 7), (12, 12), (7, 11)]
SECTION = "## Soak: kill and concurrency"
TIMEOUT_S = 120.0


def values(rows: range, cols: range) -> np.ndarray:
    i = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
    return np.sin(0.37 * i + 0.11 * j) * (1.0 + i) + 1e-3 * j


def expected() -> np.ndarray:
    return values(range(SHAPE[0]), range(SHAPE[1])).astype(np.float32)


class SlowFn:
    """The block function of the fillers: ``values`` after a short sleep."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        time.sleep(self.delay)
        return values(rows, cols)


class CountingFn:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        self.calls.append((rows.start, cols.start))
        return values(rows, cols)


def grid_of(block: tuple[int, int]) -> tuple[int, int]:
    return (-(-SHAPE[0] // block[0]), -(-SHAPE[1] // block[1]))


def block_sel(coords: tuple[int, int], block: tuple[int, int]) -> tuple[slice, slice]:
    (i, j), (br, bc) = coords, block
    return slice(i * br, min((i + 1) * br, SHAPE[0])), slice(j * bc, min((j + 1) * bc, SHAPE[1]))


# ---------------------------------------------------------------------- child processes
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(mode: str, nth: int) -> None:
    """Kill this process while writing its nth block file."""
    count = [0]

    def is_block_tmp(path: Path) -> bool:
        return path.name.endswith(".partial") and "/c/" in path.as_posix()

    if mode == "mid-write":
        real_open = pathlib.Path.open

        class HalfWriter:
            def __init__(self, f: Any) -> None:
                self.f = f

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: Any) -> int:
                raw = bytes(memoryview(data))
                self.f.write(raw[: len(raw) // 2])
                self.f.flush()
                _die()
                return 0

        def patched_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(self, mode, *args, **kwargs)
            if "w" in mode and is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    return HalfWriter(f)
            return f

        pathlib.Path.open = patched_open  # type: ignore[method-assign]
    elif mode == "before-rename":
        real_replace = pathlib.Path.replace

        def patched_replace(self: Path, target: Any) -> Any:
            if is_block_tmp(self):
                count[0] += 1
                if count[0] == nth:
                    _die()
            return real_replace(self, target)

        pathlib.Path.replace = patched_replace  # type: ignore[method-assign]


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {path}")
        time.sleep(0.001)


def child_fill(store: str, opts: dict[str, Any]) -> None:
    import infl_array as ia

    if opts.get("inject"):
        _inject(opts["inject"], opts["nth"])
    _wait_for(opts["go"])
    arr = ia.open(store, fn=SlowFn(opts["delay"]))
    grid = arr.grid_shape
    blocks = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    random.Random(opts["seed"]).shuffle(blocks)
    for b in blocks:
        arr.read_block(b)
    arr.fill(progress=False)


def child_read(store: str, opts: dict[str, Any]) -> None:
    import zarr

    import infl_array as ia

    full = expected()
    block = tuple(opts["block"])
    grid = grid_of(block)
    arr = ia.open(store)
    raw = zarr.open_array(os.path.join(store, "influence"), mode="r")
    rng = random.Random(opts["seed"])
    stats: dict[str, Any] = {"ok": 0, "missing": 0, "raw_complete": 0, "raw_empty": 0}
    wrong: list[Any] = []
    errors: list[str] = []
    seen: set[tuple[int, int]] = set()
    pathlib.Path(opts["go"]).touch()
    stop, killed = pathlib.Path(opts["stop"]), pathlib.Path(opts["killed"])
    deadline = time.monotonic() + TIMEOUT_S * 2
    after_stop = 0
    while time.monotonic() < deadline and after_stop < 10:
        after_stop += stop.exists()
        # blocks seen before the fillers were killed must survive the kill
        before_kill = not killed.exists()
        r0 = rng.randrange(SHAPE[0])
        r1 = rng.randrange(r0 + 1, min(SHAPE[0], r0 + 2 * block[0]) + 1)
        c0 = rng.randrange(SHAPE[1])
        c1 = rng.randrange(c0 + 1, min(SHAPE[1], c0 + 2 * block[1]) + 1)
        try:
            got = arr[r0:r1, c0:c1]
        except ia.MissingBlockError:
            stats["missing"] += 1
        except Exception as exc:
            errors.append(repr(exc))
        else:
            if np.array_equal(got, full[r0:r1, c0:c1]):
                stats["ok"] += 1
            else:
                wrong.append(["slice", r0, r1, c0, c1])
        coords = (rng.randrange(grid[0]), rng.randrange(grid[1]))
        sel = block_sel(coords, block)
        try:
            values_read = raw[sel]
        except Exception as exc:
            errors.append(f"raw zarr {coords}: {exc!r}")
            continue
        if np.isnan(values_read).all():
            stats["raw_empty"] += 1
        elif np.array_equal(values_read, full[sel]):
            stats["raw_complete"] += 1
            if before_kill:
                seen.add(coords)
        else:
            wrong.append(["raw", *coords])
    stats.update(wrong=wrong, errors=errors, seen=sorted(seen))
    print(json.dumps(stats))


# ---------------------------------------------------------------------- the soak
def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "child", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def chunk_count(store: Path) -> int:
    base = store / "influence" / "c"
    return sum(1 for p in base.glob("*/*") if p.name.isdigit()) if base.exists() else 0


def run_trial(
    trial: int, rng: random.Random, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    import zarr

    import infl_array as ia
    from infl_array.store import InfluenceStore

    full = expected()
    block = rng.choice(BLOCK_SHAPES)
    grid = grid_of(block)
    n_blocks = grid[0] * grid[1]
    tdir = work / f"trial{trial:03d}"
    tdir.mkdir()
    store = tdir / "store"
    ia.InfluenceArray.from_function(
        store, CountingFn(), shape=SHAPE, block_shape=block
    )  # nothing computed yet
    go, stop, killed_marker = tdir / "go", tdir / "stop", tdir / "killed"
    reader_opts = {"seed": trial, "block": block, "go": str(go), "stop": str(stop),
                   "killed": str(killed_marker)}  # fmt: skip
    reader = spawn(["read", str(store), json.dumps(reader_opts)], tdir / "reader.log")
    injected = rng.choice([None, None, "mid-write", "before-rename"])
    fillers = []
    for k in range(args.fillers):
        opts: dict[str, Any] = {"delay": args.delay, "seed": rng.randrange(1 << 30), "go": str(go)}
        if k == 0 and injected:
            opts.update(inject=injected, nth=rng.randint(1, n_blocks // 2))
        fillers.append(spawn(["fill", str(store), json.dumps(opts)], tdir / f"filler{k}.log"))
    kill_at = rng.randint(0, int(0.7 * n_blocks))
    extra = rng.uniform(0.0, 3 * args.delay)
    deadline = time.monotonic() + TIMEOUT_S
    while chunk_count(store) < kill_at and any(f.poll() is None for f in fillers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"trial {trial}: fillers made no progress")
        time.sleep(0.001)
    time.sleep(extra)
    before_kill = [f.poll() for f in fillers]
    killed = 0
    for f, rc in zip(fillers, before_kill, strict=True):
        if rc is None:
            os.killpg(f.pid, signal.SIGKILL)
            killed += 1
        f.wait(timeout=TIMEOUT_S)
    killed_marker.touch()  # every filler is dead
    failed = [f.returncode for f in fillers if f.returncode not in (0, -signal.SIGKILL)]
    self_killed = int(injected is not None and before_kill[0] == -signal.SIGKILL)

    # every block in the store is complete and correct
    ro = ia.open(store)
    computed = {(int(i), int(j)) for i, j in np.argwhere(ro.computed)}
    bad = set(ro.verify())
    raw = zarr.open_array(store / "influence", mode="r")
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
    partials = len(list(store.rglob("*.partial")))
    missing = n_blocks - len(computed)

    # refill computes exactly what is missing, while the reader keeps reading
    fn = CountingFn()
    arr = ia.open(store, fn=fn)
    refilled = arr.fill(progress=False)
    refill_exact = refilled == missing and len(fn.calls) == missing
    final_ok = np.array_equal(np.asarray(arr), full) and arr.verify() == []
    cleaned = InfluenceStore.open(store).matrix.clean_partials(
        min_age_s=0
    )  # every writer is dead now
    stop.touch()
    reader.wait(timeout=TIMEOUT_S * 3)
    lines = (tdir / "reader.log").read_text().strip().splitlines()
    try:
        rstats = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        rstats = {"errors": ["reader failed: " + "\n".join(lines[-5:])], "wrong": [], "seen": []}
    lost = {tuple(c) for c in rstats.get("seen", [])} - computed
    result = {
        "trial": trial,
        "block_shape": block,
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
    shutil.rmtree(tdir, ignore_errors=True)
    return result


def machine() -> str:
    import dask
    import zarr

    return (
        f"nproc {os.cpu_count()}, {platform.machine()}, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, zarr {zarr.__version__}, dask {dask.__version__}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        cmd, store, opts = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        {"fill": child_fill, "read": child_read}[cmd](store, opts)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--fillers", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.005, help="seconds per block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="only print the results")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="infl-soak-") as work:
        for trial in range(args.trials):
            r = run_trial(trial, rng, Path(work), args)
            results.append(r)
            flag = (
                "OK"
                if not (r["wrong"] or r["lost"] or r["reader_wrong"] or r["reader_errors"])
                and r["refill_exact"] and r["final_ok"] and not r["filler_failures"]
                else "FAIL"
            )  # fmt: skip
            print(
                f"trial {trial:3d} {flag} block {r['block_shape']} kill_at {r['kill_at']:3d} "
                f"stored {r['computed_at_kill']:3d}/{r['blocks']} killed {r['killed']} "
                f"self-killed {r['self_killed']} partials {r['partials_left']} "
                f"reader {r['reader']}",
                flush=True,
            )
    wall = time.perf_counter() - t0
    kill_points = sum(1 for r in results if r["killed"] or r["self_killed"])
    totals = {
        "trials": len(results),
        "kill_points": kill_points,
        "processes_killed": sum(r["killed"] + r["self_killed"] for r in results),
        "self_kills_inside_a_write": sum(r["self_killed"] for r in results),
        "blocks_checked": sum(r["blocks_checked"] for r in results),
        "blocks_stored_at_kill": sum(r["computed_at_kill"] for r in results),
        "blocks_lost": sum(r["lost"] for r in results),
        "blocks_wrong": sum(r["wrong"] for r in results),
        "reader_reads": sum(sum(r["reader"].values()) for r in results),
        "reader_missing_block_errors": sum(r["reader"]["missing"] for r in results),
        "reader_wrong_values": sum(r["reader_wrong"] for r in results),
        "reader_other_errors": sum(len(r["reader_errors"]) for r in results),
        "refills_not_exact": sum(not r["refill_exact"] for r in results),
        "final_matrix_wrong": sum(not r["final_ok"] for r in results),
        "filler_failures": sum(len(r["filler_failures"]) for r in results),
        "partial_files_left_by_kills": sum(r["partials_left"] for r in results),
    }
    bad = (
        totals["blocks_lost"] + totals["blocks_wrong"] + totals["reader_wrong_values"]
        + totals["reader_other_errors"] + totals["refills_not_exact"]
        + totals["final_matrix_wrong"] + totals["filler_failures"]
    )  # fmt: skip
    command = "python benchmarks/soak.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("results",)
        and not isinstance(v, bool)
    )  # fmt: skip
    text = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; wall time {wall:.0f} s",
            "",
            f"Each trial: a {SHAPE[0]} x {SHAPE[1]} float32 store with a random block shape "
            f"from {BLOCK_SHAPES}, {args.fillers} filler processes (random block orders, then "
            f"`fill()`; {args.delay * 1000:.0f} ms per block) and one read-only reader process; "
            "all fillers SIGKILLed once a random number of blocks (0 to 70%) is stored plus a "
            "random delay; in about half of the trials one filler also kills itself inside a "
            "block write (half the bytes written, or written but not renamed). Then every block "
            "is checked (decode, checksum, values), a new `fill()` must compute exactly the "
            "missing blocks, and the final matrix is compared.",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {k.replace('_', ' ')} | {v} |" for k, v in totals.items()),
            "",
            f"Blocks lost or wrong: **{totals['blocks_lost'] + totals['blocks_wrong']}** "
            f"(target 0); all checks {'passed' if bad == 0 else 'FAILED'}.",
            "",
        ]
    )
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text, args.results)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
