"""Speed of reads from a fully cached InfluenceArray, side by side with plain zarr (issue 2).

Run from the repository root::

    python benchmarks/reads/bench_reads.py            # full run (3-6 minutes on 2 cores)
    python benchmarks/reads/bench_reads.py --quick    # fewer repetitions, smaller codec study

What it measures, in one process, warm cache, interleaved and repeated (medians):

1. Reads of a fully cached 4000 x 40000 float32 store with blocks (256, 4096), through
   ``ia.open(path)`` and through ``zarr.open_array(path + "/influence", mode="r")``: full read,
   one row, one column, one element, a 1000-row slice, fancy row and point selections.
   Targets: full read within 1.3x of zarr, row / column / element within 1.5x. Like with like:
   these rows run with infl_array's in-process block cache off (``arr.block_cache.max_bytes =
   0``), so every read decodes its chunks as plain zarr does. The same reads are then repeated
   with the cache on (default bound, a freshly opened array per read; labelled "cache on"): no
   target, they show what repeated reads cost when the cache serves them.
2. Block planning for one element of a 100,000 x 1,000,000 array (``reads_micro.py``).
3. Codec study on one 256 x 4096 block of influence-like data (``reads_micro.py``).
4. First (computing) read of a slice against its repeated read, with the block cache on
   (the default) and off.

The store is written under ``benchmarks/_work/`` (git-ignored) and deleted afterwards. The
measurements go to the record ``benchmarks/results/reads.json`` (``results_md.save_result``);
the section "Reads against plain zarr (issue 2)" of ``benchmarks/RESULTS.md`` is rendered from
it by ``reads_report.render`` (other sections are left as they are; ``--no-write`` only prints
it and writes nothing).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
import results_md
import zarr
from harness import (
    FirstRead,
    Timer,
    first_then_repeated,
    interleaved,
    log,
    machine_info,
    median,
    scratch_dir,
    timed,
)
from reads_data import BLOCK, SHAPE, cheap_block, matmul_factory, t_block
from reads_micro import PLAN_SHAPE, bench_codecs, bench_planning
from reads_report import SECTION
from results_md import fmt_t

import infl_array as ia


# ---------------------------------------------------------------------- 1. reads vs zarr
class FreshRead:
    """A read of a freshly opened array with the default block cache (opened on first call)."""

    def __init__(self, path: str, key: Callable[[Any], Any]) -> None:
        self.path, self.key = path, key
        self.arr: Any = None

    def __call__(self) -> Any:
        if self.arr is None:
            self.arr = ia.open(self.path)
        return self.key(self.arr)


@dataclass
class Case:
    """One read, ours against zarr's; ``target`` bounds the ratio of medians (None: no target)."""

    name: str
    ours: Callable[[], Any]
    zarr: Callable[[], Any]
    reps: int
    target: float | None
    checked: bool = True  # cache-on cases: compare the values once after timing


def read_cases(path: str, quick: bool) -> list[Case]:
    """The reads, cache off (targets), then the same reads on fresh arrays with the cache on."""
    a = ia.open(path)
    a.block_cache.max_bytes = 0  # like with like: every read decodes, as plain zarr does
    z = zarr.open_array(path + "/influence", mode="r")
    assert a.shape == z.shape == SHAPE
    rng = np.random.default_rng(1)
    fancy = np.sort(rng.choice(SHAPE[0], 100, replace=False))
    pts_r, pts_c = rng.integers(0, SHAPE[0], 1000), rng.integers(0, SHAPE[1], 1000)
    small, mid, big = (9, 5, 3) if quick else (41, 15, 9)
    reads: list[tuple[str, Callable[[Any], Any], Callable[[], Any], int, float | None]] = [
        ("full read `arr[:, :]`", lambda x: x[:, :], lambda: z[:, :], big, 1.3),
        ("row `arr[1234]`", lambda x: x[1234], lambda: z[1234], small, 1.5),
        ("column `arr[:, 12345]`", lambda x: x[:, 12345], lambda: z[:, 12345], small, 1.5),
        (
            "element `arr[1234, 12345]`",
            lambda x: x[1234, 12345],
            lambda: z[1234, 12345],
            small,
            1.5,
        ),
        ("1000 rows `arr[1000:2000]`", lambda x: x[1000:2000], lambda: z[1000:2000], mid, None),
        (
            "100 fancy rows `arr[idx]` (zarr: `oindex[idx, :]`)",
            lambda x: x[fancy],
            lambda: z.oindex[fancy, :],
            mid,
            None,
        ),
        (
            "1000 points `arr[ri, ci]` (zarr: `vindex`)",
            lambda x: x[pts_r, pts_c],
            lambda: z.vindex[pts_r, pts_c],
            mid,
            None,
        ),
    ]
    off = [Case(n, partial(k, a), zr, r, t) for n, k, zr, r, t in reads]
    asarray = Case("full read `np.asarray(arr)`", lambda: np.asarray(a), lambda: z[:, :], big, 1.3)
    off.insert(1, asarray)
    for c in off[2:]:  # same values on both sides, once (all but the two full reads)
        np.testing.assert_array_equal(np.asarray(c.ours()), np.asarray(c.zarr()), err_msg=c.name)
    # the warm-up read fills the cache (reads of more than 8 blocks bypass it unless all their
    # blocks are cached), the timed ones repeat it
    on = [
        Case(f"cache on, repeated: {n}", FreshRead(path, k), zr, r, None, not n.startswith("full"))
        for n, k, zr, r, _ in reads
    ]
    return off + on


def measure(case: Case) -> dict[str, Any]:
    """Interleaved medians of one case, as a row of the table."""
    ta, tb, ca, cb = interleaved((case.ours, case.zarr), case.reps)
    cache = None
    if isinstance(case.ours, FreshRead):
        if case.checked:  # same values from the cache
            np.testing.assert_array_equal(
                np.asarray(case.ours()), np.asarray(case.zarr()), err_msg=case.name
            )
        bc = case.ours.arr.block_cache
        cache = (len(bc), bc.nbytes, bc.max_bytes)
        case.ours.arr = None
    gc.collect()
    ma, mb = median(ta), median(tb)
    row = {
        "case": case.name,
        "ia": ma,
        "zarr": mb,
        "ratio_min": min(ta) / min(tb),
        "ratio_cpu": median(ca) / median(cb),
        "target": case.target,
        "reps": case.reps,
        "spread": (min(ta), max(ta), min(tb), max(tb)),
        "cache": cache,
    }
    log(
        f"  {case.name:52s} ia {fmt_t(ma):>10s}  zarr {fmt_t(mb):>10s}  ratio {ma / mb:5.2f}"
        f"  target {case.target}  (n={case.reps}, minima {row['ratio_min']:.2f}, "
        f"cpu {row['ratio_cpu']:.2f})"
    )
    return row


def bench_reads(workdir: Path, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = str(workdir / "reads.zarr")
    t = Timer()
    arr = ia.InfluenceArray.from_function(path, t_block, shape=SHAPE, block_shape=BLOCK)
    arr.fill(progress=False)
    store = {"fill_s": t.lap(), "stored": arr.stored_bytes(), "raw": SHAPE[0] * SHAPE[1] * 4}
    del arr
    log(
        f"  store filled in {store['fill_s']:.1f} s: {store['raw'] / 1e6:.0f} MB raw, "
        f"{store['stored'] / 1e6:.0f} MB stored, ratio {store['raw'] / store['stored']:.3f}"
    )
    rows = [measure(case) for case in read_cases(path, quick)]
    shutil.rmtree(path, ignore_errors=True)
    return rows, store


# ---------------------------------------------------------------------- 4. first vs cached
def first_vs_cached(
    path: str, name: str, fn: Callable[[range, range], np.ndarray], quick: bool
) -> dict[str, Any]:
    """Fresh 2 x 2-block slices (512 x 8192), each read first (4 blocks computed), then again."""
    arr = ia.InfluenceArray.from_function(path, fn, shape=SHAPE, block_shape=BLOCK, overwrite=True)
    reads: list[FirstRead] = []
    fn_cost: list[float] = []
    for k in range(3 if quick else 7):
        r0, c0 = 2 * BLOCK[0] * (k % 7), 2 * BLOCK[1] * (k // 7)
        key = (slice(r0, r0 + 2 * BLOCK[0]), slice(c0, c0 + 2 * BLOCK[1]))
        reads.append(first_then_repeated(arr, key, 3))
        assert reads[-1].blocks_computed == 4, reads[-1]
        block = (range(r0, r0 + BLOCK[0]), range(c0, c0 + BLOCK[1]))
        fn_cost.append(timed(partial(fn, *block)))
    mf = median(r.first for r in reads)
    mc = median(t for r in reads for t in r.cached)
    md = median(t for r in reads for t in r.decoded)
    fb = median(fn_cost)
    log(
        f"  {name:52s} first {fmt_t(mf):>10s}  cached {fmt_t(mc):>10s}  "
        f"ratio {mf / mc:6.1f}x  cache off {fmt_t(md):>10s} ratio {mf / md:6.1f}x  "
        f"(fn alone {fmt_t(fb)}/block)"
    )
    # per-block fn cost at which the first read would be 100x the repeated one
    overhead = max(0.0, mf - 4 * fb)
    return {
        "fn": name,
        "first": mf,
        "cached": mc,
        "decoded": md,
        "fn_block": fb,
        "need": max(0.0, (100 * mc - overhead) / 4),
        "need_decoded": max(0.0, (100 * md - overhead) / 4),
    }


def bench_first_vs_cached(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    fns: list[tuple[str, Callable[[range, range], np.ndarray]]] = [
        ("cheap fn (broadcast sum)", cheap_block),
        ("matmul fn (256x512 @ 512x4096 float32 per block)", matmul_factory()),
    ]
    out = []
    for name, fn in fns:
        path = str(workdir / "first.zarr")
        out.append(first_vs_cached(path, name, fn, quick))
        shutil.rmtree(path, ignore_errors=True)
    return out


# ---------------------------------------------------------------------- main
def reads_machine_info() -> dict[str, str]:
    info = machine_info(("numpy", "zarr", "numcodecs", "infl_array"))
    blosc = getattr(numcodecs.blosc, "VERSION_STRING", "?")
    info["blosc"] = f"{blosc} (nthreads {numcodecs.blosc.get_nthreads()})"
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    results_md.add_output_args(parser)
    args = parser.parse_args(argv)
    info = reads_machine_info()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    t, load_start = Timer(), results_md.load_now()
    with scratch_dir("bench_reads") as workdir:
        log("1. reads against plain zarr")
        reads, store = bench_reads(workdir, args.quick)
        log("2. block planning, one element of 100,000 x 1,000,000")
        plans = bench_planning(args.quick)
        log("3. codecs, one 256 x 4096 block")
        codecs = bench_codecs(args.quick)
        log("4. first (computing) read against cached read")
        first = bench_first_vs_cached(workdir, args.quick)
    data = {
        "quick": args.quick,
        "shape": SHAPE,
        "block": BLOCK,
        "plan_shape": PLAN_SHAPE,
        "store": store,
        "reads": reads,
        "plans": plans,
        "codecs": {"rows": codecs[0], "names": codecs[1]},
        "first": first,
    }
    results_md.save_result(
        "reads",
        SECTION,
        "reads/reads_report.py:render",
        data,
        args,
        script="reads/bench_reads.py",
        argv=sys.argv[1:] if argv is None else argv,
        wall_s=t.lap(),
        machine=info,
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
