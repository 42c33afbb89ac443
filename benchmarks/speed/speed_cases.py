"""The ``floor``, ``memory`` and ``reads`` cases of ``bench_speed.py`` (ours only).

- ``floor``: a larger CG case; all test factors once, all train factors once and one float32
  product (the floor), against ``fill()`` of the same matrix, in one process, floor first.
- ``memory``: peak RSS over the process baseline of one step on a 1e9-entry ``from_function``
  array: ``fill()``, a full-row read, or ``np.asarray`` of a 1,000-row slice (one step per
  process; the driver runs the three in turn on one store).
- ``reads``: cached reads of a model-backed store against plain zarr (block cache off, then the
  same reads with it on), and the first (computing) read of keys on fresh stores against their
  repeats (cache on, then off).
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
from functools import partial
from operator import getitem
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import (
    PeakRSS,
    Timer,
    first_then_repeated,
    interleaved,
    log,
    median,
    repeat,
    scratch_dir,
)
from results_md import fmt_t
from speed_models import caught_warnings, make_problem, ours_fill, rel_diff, setup_torch


# ---------------------------------------------------------------------- floor
def worker_floor(quick: bool) -> dict[str, Any]:
    torch = setup_torch()
    import numpy as np

    from infl_array.torch import CgInfluence

    n_train, n_test, n_fit = (20_000, 2_000, 500) if not quick else (4_000, 400, 200)
    d_in, hidden = 100, 96
    prob = make_problem(d_in, hidden, n_train, n_test, seed=3, steps=400, batch=200)
    model, train, test = prob["model"], prob["train"], prob["test"]
    # The Hessian comes from a seeded subsample of n_fit train points (see the report: the
    # full 20,000-point Hessian costs ~800 s per CG iteration for 2,000 right-hand sides here).
    fit_idx = torch.randperm(n_train, generator=torch.Generator().manual_seed(33))[:n_fit]
    fit_data = (train[0][fit_idx], train[1][fit_idx])
    settings = {"regularization": 1.0, "rtol": 1e-4, "atol": 1e-6, "batch_size": n_fit}
    block = (256, 4096)
    res: dict[str, Any] = {
        "n_train": n_train,
        "n_test": n_test,
        "n_fit": n_fit,
        "n_params": prob["n_params"],
        "acc": prob["acc"],
        "settings": settings,
        "block": block,
        "arch": f"{d_in} -> {hidden} -> 3",
    }
    with scratch_dir("bench_speed_floor") as work, caught_warnings() as w:
        cg = (
            CgInfluence(model, torch.nn.functional.cross_entropy, **settings)
            .fit(fit_data)
            .prepare()
        )
        log("  floor: the floor (all test factors, all train factors, one product)")
        t = Timer()
        tf = cg.test_factors(*test)
        res["floor_test_factors"] = t.lap()
        res["floor_cg_iters"] = cg.n_iter_
        trf = cg.train_factors(*train)
        res["floor_train_factors"] = t.lap()
        full = tf @ trf.T
        res["floor_product_f32"] = t.lap()
        del trf
        gc.collect()
        log("  floor: fill()")
        dt, arr = ours_fill(cg, train, test, block, work / "floor.zarr")
        res["fill"] = dt
        res["stats"] = dataclasses.asdict(arr.stats)
        res["rel_fill_vs_floor"] = rel_diff(np.asarray(arr), full.numpy())
        # extra, after the timed part: a float64 product of the same factors
        trf = cg.train_factors(*train)
        t.lap()
        _ = tf.double() @ trf.double().T
        res["product_f64"] = t.lap()
    res["warnings"] = list(w)
    return res


# ---------------------------------------------------------------------- memory
MEM_SEED = 4


def mem_block(rows: range, cols: range) -> Any:
    """A cheap block function: seeded normal float32 values x 1e-3, per block."""
    import numpy as np

    rng = np.random.default_rng([MEM_SEED, rows.start, cols.start])
    out = rng.standard_normal((len(rows), len(cols)), dtype=np.float32)
    out *= np.float32(1e-3)
    return out


def worker_memory(step: str, path: str, quick: bool) -> dict[str, Any]:
    """One step (``fill``, ``row`` or ``slice``) on the store at ``path``."""
    import numpy as np

    import infl_array as ia

    shape = (20_000, 50_000) if not quick else (2_000, 50_000)
    block = (256, 4096)
    if step == "fill":
        arr = ia.InfluenceArray.from_function(
            path, mem_block, shape=shape, block_shape=block, overwrite=True
        )
        with PeakRSS() as m:
            t = Timer()
            n = arr.fill(progress=False)
            dt = t.lap()
        return {
            "shape": shape,
            "block": block,
            "blocks": n,
            "seconds": dt,
            "baseline": m.baseline,
            "delta": m.delta,
            "stored": arr.stored_bytes(),
            "raw": shape[0] * shape[1] * 4,
        }
    arr = ia.open(path, fn=mem_block)
    reads = {"row": lambda: arr[12_345 % shape[0]], "slice": lambda: np.asarray(arr[1000:2000])}
    if step not in reads:
        raise ValueError(f"memory step must be one of fill, {', '.join(reads)}; got {step!r}")
    with PeakRSS() as m:
        t = Timer()
        out = reads[step]()
        dt = t.lap()
    return {"seconds": dt, "baseline": m.baseline, "delta": m.delta, "out_bytes": out.nbytes}


# ---------------------------------------------------------------------- reads
READ_KEYS: list[tuple[str, Any, float | None]] = [
    ("full read `arr[:, :]`", (slice(None), slice(None)), 1.3),
    ("row `arr[123]`", 123, 1.5),
    ("column `arr[:, 1234]`", (slice(None), 1234), 1.5),
    ("element `arr[123, 1234]`", (123, 1234), 1.5),
    ("1000 rows `arr[500:1500]`", slice(500, 1500), None),
]
"""(case, key, target of the ratio ours / zarr, or None): the cached reads against zarr."""

FIRST_KEYS: list[tuple[str, Any]] = [
    ("element `[123, 1234]`", (123, 1234)),
    ("row `[123]`", 123),
    ("column `[:, 1234]`", (slice(None), 1234)),
    ("one block `[0:256, 0:4096]`", (slice(0, 256), slice(0, 4096))),
    ("rows `[0:512]`", slice(0, 512)),
]
"""(case, key): the first (computing) reads, each on a fresh store."""


def cached_reads(path: str, quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Reads of the filled store at ``path`` against plain zarr: block cache off (interleaved),
    then the same reads repeated on one freshly opened array with the cache on."""
    import numpy as np
    import zarr

    import infl_array as ia

    a = ia.open(path)
    a.block_cache.max_bytes = 0  # like with like: every read decodes, as plain zarr does
    z = zarr.open_array(path + "/influence", mode="r")
    n_small, n_big = (31, 9) if not quick else (7, 3)
    off, on = [], []
    for name, key, target in READ_KEYS:
        reps = n_small if target == 1.5 else n_big
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(z[key]))
        ta, tb, _, _ = interleaved(
            (partial(getitem, a, key), partial(getitem, z, key)), reps, False
        )
        off.append({"case": name, "ia": median(ta), "zarr": median(tb), "target": target})
        log(f"  reads: {name}: ia {fmt_t(median(ta))}, zarr {fmt_t(median(tb))}")
    c = ia.open(path)  # the same reads with the in-process block cache on (default bound)
    for (name, key, target), row in zip(READ_KEYS, off, strict=True):
        reps = n_small if target == 1.5 else n_big
        np.testing.assert_array_equal(np.asarray(c[key]), np.asarray(a[key]))
        tc = repeat(partial(getitem, c, key), reps)
        on.append(
            {
                "case": name,
                "ia": median(tc),
                "zarr": row["zarr"],
                "max_bytes": c.block_cache.max_bytes,
            }
        )
        log(f"  reads (cache on): {name}: ia {fmt_t(median(tc))}")
    return off, on


def first_reads(infl: Any, train: Any, test: Any, block: Any, work: Path) -> list[dict]:
    """Each key of ``FIRST_KEYS`` on its own fresh store (fresh factor memo, empty block cache):
    the first read, then 9 repeats with the block cache on and 9 with it off."""
    import infl_array as ia

    first = []
    for name, key in FIRST_KEYS:
        p = work / "first.zarr"
        shutil.rmtree(p, ignore_errors=True)
        arr = ia.InfluenceArray.create(str(p), infl, test=test, train=train, block_shape=block)
        fr = first_then_repeated(arr, key, 9)
        again, decode = median(fr.cached), median(fr.decoded)
        first.append(
            {
                "key": name,
                "first": fr.first,
                "again": again,
                "again_nocache": decode,
                "blocks": fr.blocks_computed,
            }
        )
        log(
            f"  reads: first {name}: {fmt_t(fr.first)} ({fr.blocks_computed} blocks computed), "
            f"again {fmt_t(again)}, again without cache {fmt_t(decode)}"
        )
        del arr
    return first


def worker_reads(quick: bool) -> dict[str, Any]:
    torch = setup_torch()
    from infl_array.torch import DirectInfluence

    n_train, n_test = (10_000, 2_000) if not quick else (4_000, 600)
    prob = make_problem(20, 64, n_train, n_test, seed=2, steps=600, batch=100)
    model, train, test = prob["model"], prob["train"], prob["test"]
    ce = torch.nn.functional.cross_entropy
    block = (256, 4096)
    infl = DirectInfluence(model, ce, regularization=0.01).fit(train).prepare()
    res: dict[str, Any] = {"n_train": n_train, "n_test": n_test, "block": block}
    with scratch_dir("bench_speed_reads") as work:
        path = str(work / "reads.zarr")
        _, arr = ours_fill(infl, train, test, block, Path(path))
        del arr
        res["cached"], res["cache_on"] = cached_reads(path, quick)
        res["first"] = first_reads(infl, train, test, block, work)
    return res
