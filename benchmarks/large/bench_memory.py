"""Peak memory of a fit and a fill against ``memory_budget``, for every backend (issue 21).

Each case runs in a fresh process: import torch and infl_array, build the ladder CNN
(:mod:`large_common`, about 1e5, 1e6 or 1e7 parameters; untrained: memory does not depend on
the weights) and synthetic CIFAR-like data (``--n-train`` x ``--n-test``), measure the
process's resident memory then (the *baseline*: interpreter, torch, the model and the data the
caller holds), then, through the public array only::

    infl = Backend(model, loss, ..., memory_budget=B).fit((x_train, y_train))
    arr = ia.InfluenceArray.create(store, infl, test=..., train=...)   # default block shape
    arr.fill(); arr[:]

and report the peak resident memory of the process (``ru_maxrss``) against ``baseline + B``:
the promise is that a fit and a fill stay within the budget beyond what the caller holds
(SPEC "Promises under load and faults"). The bound is stricter than ``B + model + data +
baseline``: the baseline already holds the model and the data. The budget's own account
(``infl.budget.high_water``: what the parts reserved together) is reported beside it.

Backends where they apply at a size: the per-layer ones (``EkfacInfluence``,
``ProjectedInfluence``) everywhere; the full-parameter ones where a case stays short: their
iterative solves (``CgInfluence``, ``LissaInfluence``) with few iterations (memory, not
accuracy, is measured), ``ArnoldiInfluence`` (with a loose ``tol=1e-2``: ARPACK's restarts on
an untrained model took over 200 s at 1e5 parameters) and ``NystroemSketchInfluence`` at rank 10;
``DirectInfluence`` nowhere (its Hessian has ``p**2`` entries: 40 GB at 1e5 parameters).

Each case has its own data sizes: the iterative and sketched backends, whose compute time
grows with ``n_test * n_train`` solves or products, run on fewer points (``--only SIZE BACKEND
GIB N_TRAIN N_TEST``; memory, not accuracy, is measured). Besides the peak of the whole case,
the peak after the fit is reported (``ru_maxrss`` then).

Run from the repository root (the default cases take about 25 minutes on 2 cores; run them in
parts with ``--only`` and ``--name``)::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/large/bench_memory.py

writes ``benchmarks/results/<name>.json`` (``--name``, default ``memory``; another name is
its own section, ``Memory budget (issue 21): <name>``) and its section of RESULTS.md
(``--no-write``: print only); ``--case SIZE BACKEND GIB`` runs one case in this process and
prints its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from harness import machine_info  # noqa: E402
from results_md import (  # noqa: E402
    add_output_args,
    fmt_t,
    measure_and_save,
    record_head,
    table,
    yes_no,
)

SECTION = "## Memory budget (issue 21)"
GIB = 1 << 30

FEW = (200, 20)
"""Train and test points of the cases whose compute time grows with both (see the docstring)."""

FEWEST = (50, 5)
"""Those of the iterative backends at 1e6 parameters (CG took over 200 s at ``FEW``)."""

AT_1E7 = (10, 2)
"""Those of the backends solving with full-size vectors at 1e7 parameters (each test row's
vectors are 40 MB; CG took 13 min to fill 50 x 5)."""

ITERATIVE = ("cg", "lissa", "arnoldi")
EXPLICIT = ("direct", "ihm")

# (size, backend, budget in GiB, n_train, n_test); n None: --n-train and --n-test
Case = tuple[str, str, float, "int | None", "int | None"]
CASES: list[Case] = [
    *[(s, b, 1, None, None) for s in ("1e5", "1e6") for b in ("ekfac", "projected")],
    *[(s, b, 2, None, None) for s, b in (("1e5", "ekfac"), ("1e6", "projected"))],
    ("1e5", "nystroem", 1, None, None),
    ("1e6", "nystroem", 1, *FEW),
    *[("1e5", b, 1, *FEW) for b in (*ITERATIVE, *EXPLICIT)],
    *[("1e6", b, 1, *FEWEST) for b in (*ITERATIVE, *EXPLICIT)],
    *[("1e7", b, g, *FEW) for b, g in (("ekfac", 1), ("projected", 1), ("ekfac", 2))],
    *[("1e7", b, 1, *AT_1E7) for b in ("nystroem", *ITERATIVE, *EXPLICIT)],
]


def backend(name: str, model: Any, budget: int) -> Any:
    """The backend ``name`` on ``model`` with ``memory_budget=budget`` (settings of the module
    docstring)."""
    import torch

    from infl_array.torch import (
        ArnoldiInfluence,
        CgInfluence,
        DirectInfluence,
        EkfacInfluence,
        InverseHarmonicMeanInfluence,
        LissaInfluence,
        NystroemSketchInfluence,
        ProjectedInfluence,
    )

    loss, reg = torch.nn.functional.cross_entropy, 1e-2
    kw = {"memory_budget": budget}
    made = {
        "direct": lambda: DirectInfluence(model, loss, reg, **kw),
        "ihm": lambda: InverseHarmonicMeanInfluence(model, loss, reg, **kw),
        "cg": lambda: CgInfluence(model, loss, reg, maxiter=5, **kw),
        "lissa": lambda: LissaInfluence(model, loss, reg, maxiter=5, **kw),
        "arnoldi": lambda: ArnoldiInfluence(model, loss, reg, rank=10, tol=1e-2, max_iter=3, **kw),
        "nystroem": lambda: NystroemSketchInfluence(model, loss, reg, rank=10, **kw),
        "ekfac": lambda: EkfacInfluence(model, loss, reg, **kw),
        "projected": lambda: ProjectedInfluence(model, loss, reg, projection_dim=1024, **kw),
    }
    return made[name]()


def rss_bytes() -> int:
    """Resident memory of this process now (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def warm_up(model: Any, train: tuple[Any, Any]) -> None:
    """One forward and backward pass of one sample, and one ``torch.func`` per-sample
    gradient, results dropped: torch's one-time initialisation (kernels, thread pools, the
    convolution library's caches, ``torch.func``'s transforms: about 80 MiB at 1e6 and at 1e7
    parameters alike) happens here, before the baseline, as in any process that has used
    torch on the model before."""
    import torch
    from torch.func import functional_call, grad, vmap

    ce = torch.nn.functional.cross_entropy
    x, y = train[0][:1], train[1][:1]
    ce(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: Any, xi: Any, yi: Any) -> Any:
        return ce(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def run_case(size: str, name: str, gib: float, n_train: int, n_test: int) -> dict[str, Any]:
    """One case in this process (see the module docstring)."""
    import numpy as np
    import torch
    from large_common import make_cnn, make_data, n_params

    import infl_array as ia
    import infl_array.torch
    from infl_array.errors import MemoryBudgetError

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = make_cnn(size).eval()
    data = make_data(n_train, n_test)
    test, train = (data["x_test"], data["y_test"]), (data["x_train"], data["y_train"])
    warm_up(model, train)
    budget = int(gib * GIB)
    out: dict[str, Any] = {
        "size": size,
        "backend": name,
        "budget": budget,
        "params": n_params(model),
        "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "data_bytes": sum(t.numel() * t.element_size() for t in data.values()),
        "n_train": n_train,
        "n_test": n_test,
        "baseline_rss": rss_bytes(),
        "baseline_peak": peak_bytes(),
    }
    started = time.perf_counter()
    infl = backend(name, model, budget)
    stage = "fit"
    try:  # a backend that cannot fit its budget must say so: then the bound held if RSS did
        infl.fit(train)
        out["fit_peak_rss"] = peak_bytes()
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            arr = ia.InfluenceArray.create(Path(tmp) / "s", infl, test=test, train=train)
            out["fit_s"] = time.perf_counter() - started
            out["block_shape"] = list(arr.block_shape)
            started = time.perf_counter()
            stage = "the first read"
            out["blocks"] = arr.fill(progress=False)
            values = np.asarray(arr[:])
            out["finite"] = bool(np.isfinite(values).all())
            out["fill_s"] = time.perf_counter() - started
    except MemoryBudgetError as exc:
        out["refused_at"] = stage
        out["refused"] = f"{type(exc).__name__}: {str(exc).rsplit('); ', 1)[0]})"
    out["peak_rss"] = peak_bytes()
    out["budget_high_water"] = infl.budget.high_water
    out["bound"] = out["baseline_rss"] + budget
    out["met"] = out["peak_rss"] <= out["bound"]
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every case in a fresh process, one after the other."""
    cases = []
    chosen = CASES if not args.only else [_case_arg(values) for values in args.only]
    for size, name, gib, n_train, n_test in chosen:
        n_train, n_test = n_train or args.n_train, n_test or args.n_test
        command = [sys.executable, __file__, "--case", size, name, str(gib)]
        command += ["--n-train", str(n_train), "--n-test", str(n_test)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            case = {"size": size, "backend": name, "budget": int(gib * GIB)}
            case["error"] = f"stopped after the case's {args.timeout:g} s (--timeout)"
        else:
            case = _case_of(done, size, name, gib)
        case.setdefault("n_train", n_train)
        case.setdefault("n_test", n_test)
        case["wall_s"] = time.perf_counter() - started
        print(json.dumps(case), flush=True)
        cases.append(case)
    return {"n_train": args.n_train, "n_test": args.n_test, "cases": cases}


def _case_arg(values: list[str]) -> Case:
    """A case from ``--only SIZE BACKEND GIB [N_TRAIN N_TEST]``."""
    if len(values) not in (3, 5):
        raise SystemExit(f"--only takes SIZE BACKEND GIB [N_TRAIN N_TEST]; got {values}")
    size, name, gib, *n = values
    return (
        (size, name, float(gib), *(int(v) for v in n))
        if n
        else (size, name, float(gib), None, None)
    )


def _case_of(
    done: subprocess.CompletedProcess[str], size: str, name: str, gib: float
) -> dict[str, Any]:
    """The record of a case from its process: its JSON line, or its last error line."""
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"size": size, "backend": name, "budget": int(gib * GIB), "error": last}
    case: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return case


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f}"


def render(record: Mapping[str, Any]) -> str:
    """The section of RESULTS.md from the record alone."""
    d = record["data"]
    rows = []
    for c in d["cases"]:
        points = f"{c.get('n_train', d['n_train']):,} x {c.get('n_test', d['n_test']):,}"
        head = [c["size"], c.get("params", ""), c["backend"], points, f"{c['budget'] / GIB:g}"]
        if "error" in c:
            rows.append([*head, "", "", "", "", "", "", "", f"error: {c['error']}", "", ""])
            continue
        fit_peak = c.get("fit_peak_rss")
        rows.append(
            [
                *head,
                "x".join(map(str, c.get("block_shape", []))),
                _mib(c["baseline_rss"]),
                _mib(c["model_bytes"]),
                _mib(c["data_bytes"]),
                "" if fit_peak is None else _mib(fit_peak),
                _mib(c["peak_rss"]),
                _mib(c["bound"]),
                yes_no(c["met"]) + (" (refused)" if "refused" in c else ""),
                _mib(c["budget_high_water"]),
                f"refused at {c.get('refused_at', 'the first read')}: {c['refused']}"
                if "refused" in c
                else f"{fmt_t(c['fit_s'])} / {fmt_t(c['fill_s'])}",
            ]
        )
    header = [
        "size",
        "params",
        "backend",
        "train x test",
        "budget GiB",
        "block",
        "baseline MiB",
        "model MiB",
        "data MiB",
        "peak after fit MiB",
        "peak RSS MiB",
        "bound MiB",
        "met",
        "budget high water MiB",
        "fit / fill",
    ]
    met = [c["met"] for c in d["cases"] if "met" in c]
    lines = [
        *record_head(record),
        "",
        "Fit and fill through the public array (default block shape, float32 store), each case "
        "in a fresh process. Peak RSS "
        "is the process's `ru_maxrss` (*peak after fit*: then); *baseline* is its resident "
        "memory after importing "
        "torch, building the model and the data (so it holds them) and one forward and "
        "backward pass of one sample (torch's one-time initialisation), *bound* = baseline + "
        "budget, *met* = peak RSS <= bound. *Budget high water* is what the parts reserved "
        "together in the backend's `memory_budget` (the account, not a measurement). CG and "
        "LiSSA run 5 iterations and Arnoldi has `tol=1e-2` (memory, not accuracy). "
        "DirectInfluence holds the p x p curvature: where it cannot fit the budget it must "
        "refuse (*refused*) with peak RSS still within the bound.",
        "",
        *table(header, rows, align="lrllrlrrrrrrlrl"),
        "",
        f"Within the bound: {sum(met)} of {len(met)} cases.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1_000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "BACKEND", "GIB"))
    parser.add_argument(
        "--only", nargs="+", action="append", metavar="SIZE BACKEND GIB [N_TRAIN N_TEST]",
        help="run this case instead of the default list (repeatable; the points default to "
        "--n-train and --n-test)",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="memory",
        help="the record's name (its own section of RESULTS.md unless 'memory')",
    )  # fmt: skip
    add_output_args(parser)
    args = parser.parse_args()
    if args.case:
        size, name, gib = args.case
        print(json.dumps(run_case(size, name, float(gib), args.n_train, args.n_test)))
        return
    measure_and_save(
        args.name,
        SECTION if args.name == "memory" else f"{SECTION}: {args.name}",
        "large/bench_memory.py",
        measure,
        args,
        lambda: machine_info(["torch", "zarr", "numpy"]),
    )


if __name__ == "__main__":
    main()
