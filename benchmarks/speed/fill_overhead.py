"""Per-block overhead of a fill: ``fill()`` through the public array against plain zarr.

Two cases, each measured side by side in one run, repeated ``--reps`` times (alternating which
side goes first), on fresh local directory stores:

* ``function``: ``InfluenceArray.from_function`` with a cheap function (one precomputed random
  float32 block, sliced) and ``fill()``, against writing the same chunks of the same values with
  plain zarr (``zarr.open_array`` on a store created the same way, so codecs and chunks are
  identical, one chunk-aligned assignment per block), and with one assignment per block row
  (zarr then writes the row's chunks concurrently, as ``fill()`` does with its runs of
  blocks). Default: 2,000 blocks of 100 x 100.
* ``model``: the medium case of ``bench_speed.py`` (seeded MLP of 1,539 parameters, 10,000
  train x 2,000 test, ``DirectInfluence``, blocks 100 x 100): ``create`` + ``fill()`` after one
  untimed ``fit``, against (a) writing the same chunks of its values with plain zarr and (b)
  the in-memory floor with our backend: all test factors, all train factors and one float32
  product, no store. pyDVL's in-memory call is measured by ``bench_speed.py`` in
  ``.venv-pydvl``; this script does not need that environment.

Each repetition gives seconds per side; the record ``benchmarks/results/fill_overhead.json``
(``results_md.save_result``: command, commit, machine, load at start and end, date) holds per
side every repetition with its median, min and max; the section "Fill overhead (issue 22)" of
``RESULTS.md`` is rendered from it by ``overhead_report.render``. Usage::

    python benchmarks/speed/fill_overhead.py [--reps 3] [--case function|model|both] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md

import results_md
from harness import Timer, log, machine_info, scratch_dir
from overhead_report import SECTION

FUNCTION_SHAPE, BLOCK = (2_000, 10_000), (100, 100)


def summary(times: list[float]) -> dict[str, Any]:
    """Every repetition (seconds) with its median and spread."""
    ordered = sorted(times)
    return {"runs": times, "median": ordered[len(ordered) // 2], "min": ordered[0],
            "max": ordered[-1]}  # fmt: skip


def side_by_side(sides: dict[str, Callable[[], float]], reps: int) -> dict[str, Any]:
    """Each side ``reps`` times, the order rotating every repetition; per side a summary."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(reps):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            times[name].append(sides[name]())
            log(f"  rep {k + 1}: {name} {times[name][-1]:.3f} s")
    return {name: summary(ts) for name, ts in times.items()}


def plain_zarr_writer(
    work: Path, values_of: Callable[[range, range], Any], by_row: bool = False
) -> float:
    """Seconds to write every chunk of ``work / 'plain'`` with plain zarr (store made before):
    one assignment per chunk, or per block row (``by_row``)."""
    import zarr

    array = zarr.open_array(str(work / "plain"), path="influence", mode="r+")
    (n0, n1), (b0, b1) = array.shape, array.chunks
    t = Timer()
    for i in range(0, n0, b0):
        if by_row:
            rows = range(i, min(i + b0, n0))
            array[i : rows.stop, :] = values_of(rows, range(0, n1))
            continue
        for j in range(0, n1, b1):
            rows, cols = range(i, min(i + b0, n0)), range(j, min(j + b1, n1))
            array[i : rows.stop, j : cols.stop] = values_of(rows, cols)
    return t.lap()


def function_case(work: Path, reps: int) -> dict[str, Any]:
    """``from_function`` + ``fill()`` against plain zarr writes of the same chunks."""
    import numpy as np

    import infl_array as ia

    block = np.random.default_rng(0).standard_normal(BLOCK).astype(np.float32)
    row = np.tile(block, (1, -(-FUNCTION_SHAPE[1] // BLOCK[1])))

    def fn(rows: range, cols: range) -> np.ndarray:
        return block[: len(rows), : len(cols)]

    def row_fn(rows: range, cols: range) -> np.ndarray:  # the same chunks, a block row at once
        return row[: len(rows), : len(cols)]

    def fresh(name: str) -> ia.InfluenceArray:
        shutil.rmtree(work / name, ignore_errors=True)
        return ia.InfluenceArray.from_function(
            str(work / name), fn, shape=FUNCTION_SHAPE, block_shape=BLOCK
        )

    def ours() -> float:
        arr = fresh("ours")
        t = Timer()
        assert arr.fill(progress=False) == arr.grid_shape[0] * arr.grid_shape[1]
        return t.lap()

    def plain() -> float:
        fresh("plain")
        return plain_zarr_writer(work, fn)

    def plain_rows() -> float:
        fresh("plain")
        return plain_zarr_writer(work, row_fn, by_row=True)

    sides = {"ours_fill": ours, "plain_zarr": plain, "plain_zarr_rows": plain_rows}
    out = side_by_side(sides, reps)
    out["blocks"] = (FUNCTION_SHAPE[0] // BLOCK[0]) * (FUNCTION_SHAPE[1] // BLOCK[1])
    out |= {"shape": FUNCTION_SHAPE, "block": BLOCK}
    return out


def model_case(work: Path, reps: int) -> dict[str, Any]:
    """The medium case's fill against plain zarr writes and the in-memory floor."""
    import numpy as np
    import torch
    from speed_models import case_problem, factor_pieces

    import infl_array as ia
    from infl_array.torch import DirectInfluence

    prob = case_problem("medium", quick=False)
    infl = DirectInfluence(prob["model"], prob["loss"], regularization=0.01)
    infl.fit(prob["train_loader"]).prepare()
    train, test = prob["train"], prob["test"]
    full: dict[str, np.ndarray] = {}

    def ours() -> float:
        shutil.rmtree(work / "ours", ignore_errors=True)
        t = Timer()
        arr = ia.InfluenceArray.create(
            str(work / "ours"), infl, test=test, train=train, block_shape=BLOCK
        )
        arr.fill(progress=False)
        seconds = t.lap()
        full.setdefault("values", np.asarray(arr))
        return seconds

    def plain() -> float:
        if "values" not in full:  # the values to write come from one untimed fill
            ours()
        shutil.rmtree(work / "plain", ignore_errors=True)
        shutil.copytree(work / "ours", work / "plain")
        shutil.rmtree(work / "plain" / "influence" / "c")
        values = full["values"]
        return plain_zarr_writer(work, lambda r, c: values[r.start : r.stop, c.start : c.stop])

    def floor() -> float:
        return sum(factor_pieces(infl, train, test)[k] for k in
                   ("piece_test_factors", "piece_train_factors", "piece_product_f32"))  # fmt: skip

    out = side_by_side({"ours_fill": ours, "plain_zarr": plain, "in_memory_floor": floor}, reps)
    out |= {k: prob[k] for k in ("n_params", "n_test", "n_train")}
    out["torch_threads"] = torch.get_num_threads()
    out["block"] = BLOCK
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--case", choices=("function", "model", "both"), default="both")
    results_md.add_output_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    load_start, t = results_md.load_now(), Timer()
    data: dict[str, Any] = {"reps": args.reps}
    with scratch_dir("fill_overhead") as work:
        if args.case in ("function", "both"):
            log("function case")
            data["function"] = function_case(work, args.reps)
        if args.case in ("model", "both"):
            log("model case")
            data["model"] = model_case(work, args.reps)
    results_md.save_result(
        "fill_overhead",
        SECTION,
        "speed/overhead_report.py:render",
        data,
        args,
        script="speed/fill_overhead.py",
        argv=argv,
        wall_s=t.lap(),
        machine=machine_info(["numpy", "zarr", "torch"]),
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
