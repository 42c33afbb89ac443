"""Top-k at scale (issue 23): the first answer against the floor, repeated side by side.

One trained MLP (``bench_topk.trained_mlp``: Gaussian mixture, 10 classes, 10% train labels
flipped, 3 epochs of Adam), one ``ProjectedInfluence(projection_dim=..., preconditioner=
"identity")`` fit; each case (``--cases NTRAINxNTEST``) uses the first points of the same data.
Per case, ``--repeats`` rounds, each running every variant once, the order rotating by one each
round (ours, floor, ...; then floor, ..., ours), so load drifts fall on both sides:

* ``stored``: ``arr.top_k_array(k).fill()`` on a new store (the default: train factors computed,
  stored and scanned): the first answer of ``bench_topk.py``.
* ``unstored`` (cases in ``--unstored``): the same with ``factor_disk_budget_bytes=0`` (factors
  kept in memory only, nothing written but the top-k arrays): what storing the factors costs.
* ``floor``: ``bench_topk.floor_top_k``: per train chunk its factors, one product with the test
  factors, ``torch.topk``, merged (nothing stored).

Ratios are per round (each variant against the floor of the same round); the record keeps every
time, the section shows the median and the range. The fit (cheap with the identity
preconditioner) is timed once and added to both sides, as in ``bench_topk.py``.

Run from the repository root, e.g.::

    PYTHONPATH=$PWD nice -n 5 python benchmarks/large/bench_topk_ratio.py \
        --cases 200000x500 200000x10000 --unstored 200000x500 --repeats 3

The record goes to ``benchmarks/results/topk_ratio.json`` and the section "Top-k at scale:
first answer against the floor, repeated (issue 23)" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

import results_md as rmd  # noqa: E402
from bench_topk import add_model_args, fitted, floor_top_k, store_bytes, timed  # noqa: E402

SECTION = "## Top-k at scale: first answer against the floor, repeated (issue 23)"
VARIANTS = ("stored", "unstored", "floor")


def parse_case(text: str) -> tuple[int, int]:
    """``"200000x500"`` -> ``(200000, 500)``."""
    try:
        n_train, n_test = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a case is NTRAINxNTEST (e.g. 200000x500); got {text!r}"
        ) from None
    if n_train < 1 or n_test < 1:
        raise argparse.ArgumentTypeError(f"a case needs n_train, n_test >= 1; got {text!r}")
    return n_train, n_test


def rotated(names: list[str], shift: int) -> list[str]:
    """``names`` rotated left by ``shift``.

    >>> rotated(["a", "b", "c"], 1)
    ['b', 'c', 'a']
    """
    shift %= len(names)
    return names[shift:] + names[:shift]


def run_case(
    infl: Any, train: Any, test: Any, args: argparse.Namespace, unstored: bool, tmp: Path
) -> dict[str, Any]:
    """Every variant of one case ``--repeats`` times, the order rotating each round."""
    import infl_array as ia

    n_train, n_test = len(train[1]), len(test[1])
    out: dict[str, Any] = {"n_train": n_train, "n_test": n_test}

    def ours(budget: int | None) -> Callable[[], float]:
        def run() -> float:
            path = tmp / f"store-{time.monotonic_ns()}"
            arr = ia.InfluenceArray.create(
                path,
                infl,
                test=test,
                train=train,
                block_shape=tuple(args.block),
                factor_disk_budget_bytes=budget,
            )
            tk = arr.top_k_array(args.k)
            _, seconds = timed(lambda: tk.fill(progress=False))
            key = "bytes_stored" if budget is None else "bytes_unstored"
            out[key] = store_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
            return seconds

        return run

    def floor() -> float:
        spent: dict[str, float] = {}
        _, seconds = timed(lambda: floor_top_k(infl, train, test, args.k, args.block[1], spent))
        out.setdefault("floor_factors_s", []).append(spent["factors_s"])
        return seconds

    runs = {"stored": ours(None), "floor": floor}
    if unstored:
        runs["unstored"] = ours(0)
    names = [v for v in VARIANTS if v in runs]
    out["order"] = []
    for v in names:
        out[f"{v}_s"] = []
    for rep in range(args.repeats):
        order = rotated(names, rep)
        out["order"].append(order)
        for v in order:
            out[f"{v}_s"].append(runs[v]())
            print(
                f"[{time.strftime('%H:%M:%S')}] {n_train}x{n_test} round {rep} {v} "
                f"{out[f'{v}_s'][-1]:.2f} s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    n_train, n_test = (max(c[i] for c in args.cases) for i in (0, 1))
    infl, train, test, out = fitted(args, n_train, n_test)
    out.update(repeats=args.repeats, cases=[])
    unstored = set(args.unstored)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for nt, ne in args.cases:
            sub_train = (train[0][:nt], train[1][:nt])
            sub_test = (test[0][:ne], test[1][:ne])
            case = run_case(infl, sub_train, sub_test, args, (nt, ne) in unstored, Path(tmp))
            out["cases"].append(case)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[(200_000, 500)])
    parser.add_argument(
        "--unstored", type=parse_case, nargs="*", default=[], help="cases with the unstored run"
    )
    parser.add_argument("--repeats", type=int, default=3)
    add_model_args(parser, block=(500, 8192))
    rmd.add_output_args(parser)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    missing = [c for c in args.unstored if c not in args.cases]
    if missing:
        parser.error(f"--unstored names cases not in --cases: {missing}")
    from harness import machine_info

    rmd.measure_and_save(
        "topk_ratio",
        SECTION,
        "large/bench_topk_ratio.py",
        measure,
        args,
        lambda: machine_info(["torch", "numpy", "zarr"]),
    )


# ---------------------------------------------------------------------- the section
def paired(case: Mapping[str, Any], variant: str, fit_s: float) -> list[float]:
    """Per round: (fit + ``variant``) / (fit + floor)."""
    return [
        (fit_s + a) / (fit_s + b)
        for a, b in zip(case[f"{variant}_s"], case["floor_s"], strict=True)
    ]


def _spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """The median, and the range when there are several values."""
    median = fmt(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt(min(values))} - {fmt(max(values))})"


def _signed_s(v: float) -> str:
    return f"{v:+.2f} s"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def render(record: Mapping[str, Any]) -> str:
    d = record["data"]
    fit = d["fit_s"]
    lines = rmd.record_head(record)
    lines += [
        "",
        f"Model: an MLP ({d['dim']} -> {d['hidden']} -> 10, tanh) trained 3 epochs with Adam (on "
        f"the first {d['train_points']:,} train points) on a 10-class Gaussian mixture (test "
        f"accuracy {d['test_accuracy']:.2f}); `ProjectedInfluence(projection_dim="
        f'{d["projection_dim"]}, preconditioner="identity")`, factor width {d["width"]}; float32 '
        f"stores, blocks {d['block'][0]} x {d['block'][1]}, top-{d['k']}, {d['threads']} threads. "
        f"Each case: {d['repeats']} rounds, each running every variant once, the order rotating "
        "by one each round; a ratio is a variant against the floor of the same round, with the "
        f"fit ({rmd.fmt_t(fit)}, once) added to both sides; median (min - max) over the rounds.",
        "",
        "- **stored** (the first answer): `arr.top_k_array(k).fill()` on a new store: train "
        "factors computed, stored and scanned.",
    ]
    if any("unstored_s" in case for case in d["cases"]):
        lines.append(
            "- **unstored**: the same with `factor_disk_budget_bytes=0` (factors in memory only, "
            "nothing written but the top-k arrays): the share of storing the factors."
        )
    lines += [
        "- **floor**: per train chunk its factors, one product with the test factors, "
        "`torch.topk`, merged; nothing stored.",
        "",
    ]
    rows = []
    for case in d["cases"]:
        name = f"{case['n_train']:,} x {case['n_test']:,}"
        has_unstored = "unstored_s" in case
        rows.append(
            [
                name,
                _spread(case["stored_s"], rmd.fmt_t),
                _spread(case["unstored_s"], rmd.fmt_t) if has_unstored else "",
                _spread(case["floor_s"], rmd.fmt_t),
                _spread(paired(case, "stored", fit), _x),
                _spread(paired(case, "unstored", fit), _x) if has_unstored else "",
                rmd.yes_no(statistics.median(paired(case, "stored", fit)) <= 1.2),
            ]
        )
    lines += rmd.table(
        [
            "train x test",
            "stored (first answer)",
            "unstored",
            "floor",
            "first answer / floor",
            "unstored / floor",
            "<= 1.2x (median)",
        ],
        rows,
        align="lrrrrrl",
    )
    lines += ["", *_notes(d)]
    return "\n".join(lines) + "\n"


def _notes(d: Mapping[str, Any]) -> list[str]:
    """What the stored factors cost, per case: bytes written, and time against unstored."""
    notes = []
    for case in d["cases"]:
        written = case.get("bytes_stored", 0) - case.get("bytes_unstored", 0)
        floor_f = statistics.median(case["floor_factors_s"])
        text = (
            f"{case['n_train']:,} x {case['n_test']:,}: the floor's factor pass took "
            f"{rmd.fmt_t(floor_f)} (median) of its {rmd.fmt_t(statistics.median(case['floor_s']))}"
        )
        if "unstored_s" in case:
            extra = [a - b for a, b in zip(case["stored_s"], case["unstored_s"], strict=True)]
            text += (
                f"; storing the train factors wrote {rmd.fmt_mb(written)} and cost "
                f"{_spread(extra, _signed_s)} per first answer (stored - unstored, same round)"
            )
        notes.append(f"* {text}.")
    return notes


if __name__ == "__main__":
    main()
