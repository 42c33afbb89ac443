"""Workers of the large-model benchmark that run infl_array (and the floor), one per process.

Usage: ``python benchmarks/large/large_ours.py KIND '<json>'`` with KIND one of ``floor``,
``projected``, ``ekfac``; the JSON holds ``size, n_train, n_test, rows, reg, dim, threads,
batch, out`` (and ``store`` for ``projected``). Each writes its timings and peak RSS to
``out`` and, except the floor, its first ``rows`` influence rows to ``out`` with ``.npy``.

* ``floor``: one forward and backward pass (mean loss, parameter gradients: a training step
  without the optimizer) over all train and test points, plus one float32
  ``(n_test, dim) @ (dim, n_train)`` product.
* ``projected``: ``ProjectedInfluence(projection_dim=dim)`` fit; the full matrix through
  ``InfluenceArray.create(...).fill()`` into a float32 store (blocks 256 x 4096); the full
  matrix in memory (``test_factors``, ``train_factors``, one product); ``arr.with_test`` on
  ``n_test`` new test points, filled (``with_test``; its count of train factor computations,
  0 when every train factor block was read from the first store); what bfloat16 train
  factors would cost (``bf16``: max error relative to the largest value, per-row Spearman);
  then fit and fill again with ``reuse_fit_gradients=False`` (``no_reuse``: the fill passes
  over the train data itself instead of taking the projected gradients the fit computed).
* ``ekfac``: ``EkfacInfluence(update_diagonal=True)`` fit, then the matrix THROUGH THE ARRAY
  (never the backend's factor functions): ``InfluenceArray.create(store, infl, ...,
  block_shape)`` and ``fill()`` when ``rows >= n_test``. ``block_shape`` from the JSON, or
  None: ``create`` chooses it, as it does for a user who names none, from the backend's
  ``memory_budget`` (``memory_budget`` in the JSON, else the library's default) and the bytes
  of one sample's factors; the shape used and how it was chosen are written out. With
  ``rows < n_test`` the first two block rows are read (``arr[:b]``, ``arr[b:2b]``, each timed:
  the driver estimates the whole matrix as the first plus ``n_test / b - 1`` times the second,
  labelled as an estimate). Also the array's work counts (``stats``).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_common import Timer, load, make_data, spearman_rows, worker_args, write_result

import infl_array as ia
from infl_array.torch import EkfacInfluence, ProjectedInfluence

CE = F.cross_entropy


def floor(args: dict, model: torch.nn.Module, data: dict) -> tuple[dict, None]:
    timer = Timer()
    with timer("passes"):
        for name in ("train", "test"):
            x, y = data[f"x_{name}"], data[f"y_{name}"]
            for s in range(0, len(x), args["batch"]):
                model.zero_grad()
                CE(model(x[s : s + args["batch"]]), y[s : s + args["batch"]]).backward()
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(args["n_test"], args["dim"], generator=gen)
    right = torch.randn(args["n_train"], args["dim"], generator=gen)
    with timer("product"):
        left @ right.T
    return {"times": timer.times}, None


def projected(args: dict, model: torch.nn.Module, data: dict) -> tuple[dict, np.ndarray]:
    timer = Timer()
    train, test = (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])
    store = Path(args["store"])
    infl, arr = fit_and_fill(args, model, train, test, store, timer)
    with timer("memory"):
        test_f, train_f = infl.test_factors(*test), infl.train_factors(*train)
        full = test_f @ train_f.T
    bf16 = bf16_cost(test_f, train_f, full, args["rows"])
    stored = np.asarray(arr[: args["rows"]])
    new = make_data(1, args["n_test"], seed=1)
    other = store.with_name(store.name + "-new-test")
    shutil.rmtree(other, ignore_errors=True)
    with timer("with_test"):
        again = arr.with_test((new["x_test"], new["y_test"]), other)
        again.fill(progress=False)
    recomputed = again.stats.train_factors
    hits = infl.fit_rows.hits if infl.fit_rows is not None else 0
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(other, ignore_errors=True)
    no_reuse = without_fit_rows(args, model, train, test, store)
    rows = full[: args["rows"]].numpy()
    diff = float(np.abs(stored - rows).max() / np.abs(rows).max())
    result = {"bf16": bf16, "width": infl.width, "store_vs_memory": diff}
    result["with_test_train_factors"] = recomputed
    result["fit_rows_hits"] = hits
    return {"times": timer.times, "no_reuse": no_reuse, **result}, rows


def fit_and_fill(
    args: dict,
    model: torch.nn.Module,
    train: tuple,
    test: tuple,
    store: Path,
    timer: Timer,
    reuse_fit_gradients: bool = True,
) -> tuple[ProjectedInfluence, ia.InfluenceArray]:
    """``ProjectedInfluence`` fitted (``fit``) and its matrix filled into ``store`` (``fill``)."""
    infl = ProjectedInfluence(
        model,
        CE,
        args["reg"],
        args["dim"],
        "ekfac",
        fisher_type="empirical",
        batch_size=256,
        reuse_fit_gradients=reuse_fit_gradients,
    )
    with timer("fit"):
        infl.fit(train)
    shutil.rmtree(store, ignore_errors=True)
    with timer("fill"):
        arr = ia.InfluenceArray.create(
            store, infl, test=test, train=train, block_shape=(256, 4096), dtype="float32"
        )
        arr.fill(progress=False)
    return infl, arr


def without_fit_rows(args: dict, model: torch.nn.Module, train: tuple, test: tuple, store: Path):
    """Fit and fill again with ``reuse_fit_gradients=False``: the fill computes its train side."""
    timer = Timer()
    fit_and_fill(args, model, train, test, store, timer, reuse_fit_gradients=False)
    shutil.rmtree(store, ignore_errors=True)
    return timer.times


def bf16_cost(test_f: torch.Tensor, train_f: torch.Tensor, full: torch.Tensor, rows: int) -> dict:
    """What storing the train factors in bfloat16 would cost: error and rank agreement."""
    lossy = test_f @ train_f.to(torch.bfloat16).to(train_f.dtype).T
    rho = spearman_rows(lossy[:rows].numpy(), full[:rows].numpy())  # float64: JSON-able
    err = float((lossy - full).abs().max() / full.abs().max())
    return {"max_rel_err": err, "spearman_mean": rho.mean(), "spearman_min": rho.min()}


def ekfac(args: dict, model: torch.nn.Module, data: dict) -> tuple[dict, np.ndarray]:
    """``EkfacInfluence`` through the array: fit, then ``create`` and ``fill`` (or reads)."""
    timer = Timer()
    train, test = (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])
    budget = {"memory_budget": args["memory_budget"]} if args.get("memory_budget") else {}
    infl = EkfacInfluence(
        model,
        CE,
        args["reg"],
        update_diagonal=True,
        fisher_type="empirical",
        batch_size=256,
        **budget,
    )
    with timer("fit"):
        infl.fit(train)
    store = Path(args["store"])
    shutil.rmtree(store, ignore_errors=True)
    named = tuple(args["block_shape"]) if args.get("block_shape") else None
    with timer("create"):
        arr = ia.InfluenceArray.create(
            store, infl, test=test, train=train, block_shape=named, dtype="float32"
        )
    block = tuple(arr.block_shape)
    rows = args["rows"]
    if rows >= args["n_test"]:
        with timer("fill"):
            arr.fill(progress=False)
        out = np.asarray(arr[:])
    else:  # the first two block rows read through the array; the rest estimated from them
        b = block[0]
        with timer("first_block_row"):
            out = np.asarray(arr[:b])
        with timer("second_block_row"):
            np.asarray(arr[b : 2 * b])
    widths = {"test": infl.test_factor_width, "train": infl.train_factor_width}
    stats = dataclasses.asdict(arr.stats)
    shutil.rmtree(store, ignore_errors=True)
    result = {"times": timer.times, "widths": widths, "rows": rows, "block_shape": list(block)}
    result["block_chosen_by"] = "caller" if named else "create"
    result["memory_budget"] = infl.memory_budget
    return {**result, "stats": stats}, out[: min(rows, len(out))]


def main() -> None:
    kind = sys.argv.pop(1)
    args = worker_args()
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    model, data = load(args["size"], args["n_train"], args["n_test"])
    result, scores = {"floor": floor, "projected": projected, "ekfac": ekfac}[kind](
        args, model, data
    )
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
