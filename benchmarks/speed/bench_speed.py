"""Speed of filling a model-backed store, against pyDVL 0.10 and against the floor (issue 4).

Run from the repository root (one command; the pyDVL side runs under ``.venv-pydvl``, the
numpy<2 environment that pyDVL 0.10 needs, built with ``.ci/pydvl_env.sh`` if missing)::

    python benchmarks/speed/bench_speed.py                 # full run (about 12 minutes, 2 cores)
    python benchmarks/speed/bench_speed.py --quick         # smoke run: smaller cases, few repeats
    python benchmarks/speed/bench_speed.py --skip-slow-cg  # without pyDVL's one-at-a-time CG
    python benchmarks/speed/bench_speed.py --skip-medium-seq  # without pyDVL's sequential
                                                          # calculator on medium (~37 min)
    python benchmarks/speed/bench_speed.py --cases small,memory   # a subset

Cases (each in a fresh subprocess, torch threads set to 2):

1. ``small`` / ``medium`` (``speed_pydvl.py``): the same seeded, trained MLP and data on both
   sides. Ours: ``fit`` + ``InfluenceArray.create`` + ``fill()`` into a local store (writes
   included). pyDVL: ``SequentialInfluenceCalculator(model).influences(test_loader,
   train_loader).compute(aggregator=NestedTorchCatAggregator())`` and one in-memory
   ``model.influences(x_test, y_test, x_train, y_train)``. Side by side: rounds of one fresh
   process per side, the order alternating (5 rounds for ``small``, 3 for ``medium``). CG on
   both sides at ``CgInfluence``'s documented defaults. Max relative difference of values.
2. ``floor`` (``speed_cases.py``): a larger CG case; the time to compute all test factors once,
   all train factors once and one float32 matrix product, against ``fill()`` of the same
   matrix, same process.
3. ``memory`` (``speed_cases.py``): peak RSS (over the process baseline) of ``fill()``, a
   full-row read and ``np.asarray`` of a 1,000-row slice of a ``from_function`` array of 1e9
   entries.
4. ``reads`` (``speed_cases.py``): cached reads of a model-backed store against plain zarr, and
   the first (computing) read of a slice against its repeated (cached) read.

This file is the driver: it runs each case's workers (this script again, with ``--worker``),
collects their JSON results, compares values, and saves the record
``benchmarks/results/speed.json`` (``results_md.save_result``), from which ``speed_report.py``
renders the section "Speed (issue 4)" of ``benchmarks/RESULTS.md`` (other sections are left as
they are). Scratch stores live under ``benchmarks/_work/`` (git-ignored) and are deleted
afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
import results_md
from harness import (
    ROOT,
    VENV_PY,
    Timer,
    ensure_pydvl_venv,
    log,
    machine_info,
    package_versions,
    scratch_dir,
)
from speed_models import CG_TOL
from speed_report import SECTION

ALL_CASES = ("small", "medium", "floor", "memory", "reads")


# ---------------------------------------------------------------------- workers
def worker_versions() -> dict[str, str]:
    """Versions in this interpreter's environment, with torch's thread count as benchmarked."""
    from speed_models import setup_torch

    torch = setup_torch()
    info = package_versions(("numpy", "torch", "zarr", "numcodecs", "pydvl", "infl_array"))
    info["torch threads"] = str(torch.get_num_threads())
    return info


def run_as_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The work of one ``--worker`` process (its result is written to ``--out`` as JSON)."""
    from speed_cases import worker_floor, worker_memory, worker_reads
    from speed_pydvl import worker_ours, worker_pydvl

    w = args.worker
    first = not args.later_round
    if w.startswith("ours-"):
        return worker_ours(
            w[5:], args.quick, args.reps, args.path, args.small_reg, first, args.profile
        )
    if w.startswith("pydvl-"):
        return worker_pydvl(
            w[6:],
            args.quick,
            args.reps,
            args.skip_slow_cg,
            args.path,
            args.small_reg,
            args.slow_cg_pairs,
            first,
            args.skip_medium_seq,
        )
    if w.startswith("memory-"):
        return worker_memory(w.split("-", 1)[1], args.path, args.quick)
    simple = {"floor": worker_floor, "reads": worker_reads}
    if w in simple:
        return simple[w](args.quick)
    if w == "versions":
        return worker_versions()
    raise SystemExit(f"unknown worker {w!r}")


def run_worker(
    args: list[str], label: str, python: str | None = None, timeout: float = 3600
) -> dict[str, Any]:
    """Run this script as a worker (``python``: another environment's); its JSON result, or
    ``{"error": ...}``."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="bench_speed_")
    os.close(fd)
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--worker", *args, "--out", out]
    log(f"[{time.strftime('%H:%M:%S')}] {label}: {' '.join(cmd[2:])}")
    t = Timer()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, check=False)
        if proc.returncode != 0:
            return {"error": f"worker exited with {proc.returncode}"}
        data: dict[str, Any] = json.loads(Path(out).read_text())
        data["wall"] = t.lap()
        return data
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        Path(out).unlink(missing_ok=True)


# ---------------------------------------------------------------------- cases
def compare_values(d: Path) -> dict[str, float]:
    """Max relative differences of our values (``ours.npy``) and pyDVL's (``theirs.*.npy``)."""
    import numpy as np
    from speed_models import rel_diff

    mine = np.load(d / "ours.npy")
    out = {}
    for name in ("inmem", "seq", "seq_one"):
        f = d / f"theirs.{name}.npy"
        if f.exists():
            theirs = np.load(f)
            out[f"rel_{name}"] = rel_diff(mine[: theirs.shape[0], : theirs.shape[1]], theirs)
    if (d / "theirs.seq.npy").exists():
        seq, inmem = np.load(d / "theirs.seq.npy"), np.load(d / "theirs.inmem.npy")
        out["rel_theirs_seq_vs_inmem"] = rel_diff(seq, inmem)
    return out


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's results of every round: the first round's, with every round's timings."""
    out = dict(rounds[0])
    for later in rounds[1:]:
        for k in ("fit", "inmem", "seq"):
            if k in later:
                out[k] = out.get(k, []) + later[k]
        for b, times in later.get("fill", {}).items():
            out["fill"] = {**out["fill"], b: out["fill"][b] + times}
        out["warnings"] = sorted(set(out.get("warnings", [])) | set(later.get("warnings", [])))
    return out


def pydvl_case(case: str, args: argparse.Namespace, d: Path) -> dict[str, Any]:
    """Ours (this environment) and pyDVL (.venv-pydvl), same seeded model and data, side by side.

    ``reps`` rounds; each round runs one repetition of ours and one of pyDVL's, each in a fresh
    process, the order alternating (ours first in even rounds), so both sides see the same load.
    The first round also saves the values and runs the once-only parts (pyDVL's sequential
    calculator on ``medium``, its one-right-hand-side CG on ``small``).
    """
    q = ["--quick"] if args.quick else []
    reps = (5 if case == "small" else 3) if not args.quick else 2
    common = [*q, "--reps", "1", "--small-reg", str(args.small_reg)]
    extra = ["--skip-slow-cg"] if args.skip_slow_cg else []
    extra += ["--slow-cg-pairs", str(args.slow_cg_pairs)]
    extra += ["--skip-medium-seq"] if args.skip_medium_seq else []
    ours_r: list[dict[str, Any]] = []
    theirs_r: list[dict[str, Any]] = []
    order: list[str] = []
    for r in range(reps):
        later = ["--later-round"] if r else []
        prof = ["--profile"] if args.profile and r == 0 else []
        label = f"round {r + 1}/{reps}"
        ours_args = [f"ours-{case}", *common, *later, *prof, "--path", str(d / "ours.npy")]
        theirs_args = [f"pydvl-{case}", *common, *extra, *later, "--path", str(d / "theirs")]
        sides = [
            ("ours", partial(run_worker, ours_args, f"{case} ours, {label}")),
            ("pyDVL", partial(run_worker, theirs_args, f"{case} pyDVL, {label}", str(VENV_PY))),
        ]
        for name, run in sides if r % 2 == 0 else sides[::-1]:
            (ours_r if name == "ours" else theirs_r).append(run())
            order.append(name)
        if any("error" in x for x in (ours_r[-1], theirs_r[-1])):
            break
    bad = [x["error"] for x in ours_r + theirs_r if "error" in x]
    out: dict[str, Any] = {"reps": len(ours_r), "order": order}
    if bad:
        return out | {"error": "; ".join(bad)}
    out |= {"ours": merge_rounds(ours_r), "theirs": merge_rounds(theirs_r)}
    shas = {x["model_sha"] for x in ours_r + theirs_r}
    if len(shas) != 1:
        return out | {"error": f"the two sides trained different models: {sorted(shas)}"}
    return out | compare_values(d)


def run_case(case: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(key in the results, result)`` of one case."""
    q = ["--quick"] if args.quick else []
    if case in ("small", "medium"):
        key = case if case == "medium" or args.small_reg == 0.01 else f"small@{args.small_reg}"
        with scratch_dir(f"bench_speed_{case}_cmp") as d:
            return key, pydvl_case(case, args, d)
    if case == "memory":
        with scratch_dir("bench_speed_memory") as d:
            path = str(d / "mem.zarr")
            mem = {"fill": run_worker(["memory-fill", "--path", path, *q], "memory fill")}
            for step in ("row", "slice"):
                mem[step] = run_worker([f"memory-{step}", "--path", path, *q], step)
        return case, mem
    return case, run_worker([case, *q], case)


# ---------------------------------------------------------------------- driver
def speed_machine_info() -> dict[str, str]:
    """Host facts, this environment's versions and, if present, the pyDVL environment's."""
    info = machine_info() | run_worker(["versions"], "versions")
    if VENV_PY.exists():
        venv = run_worker(["versions"], "versions (.venv-pydvl)", python=str(VENV_PY))
        info["pyDVL environment"] = (
            f"(.venv-pydvl: numpy {venv.get('numpy')}, torch {venv.get('torch')}, pydvl "
            f"{venv.get('pydvl')})"
        )
    info.pop("wall", None)
    return info


def drive(args: argparse.Namespace, argv: list[str]) -> int:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - set(ALL_CASES))
    if bad:
        raise SystemExit(f"unknown case(s) {bad}; choose from {', '.join(ALL_CASES)}")
    if "small" in cases or "medium" in cases:
        ensure_pydvl_venv()
    load_start = results_md.load_now()
    info = speed_machine_info()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    results: dict[str, Any] = {}
    if args.merge:
        results = json.loads(Path(args.merge).read_text())
        results.pop("settings", None)
    t_all = Timer()
    for case in cases:
        key, results[key] = run_case(case, args)
        shown = {k: v for k, v in results[key].items() if not str(k).startswith("profile")}
        print(json.dumps({key: shown}, default=str), flush=True)
    results["settings"] = {
        "cg_tol": CG_TOL,
        "quick": args.quick,
        "small_reg": args.small_reg,
        "medium_seq": not args.skip_medium_seq,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    results_md.save_result(
        "speed",
        SECTION,
        "speed/speed_report.py:render",
        json.loads(json.dumps(results, default=str)),
        args,
        script="speed/bench_speed.py",
        argv=argv,
        wall_s=t_all.lap(),
        machine=info,
        load_start=load_start,
    )
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, fewer repeats")
    parser.add_argument(
        "--skip-slow-cg", action="store_true", help="skip pyDVL's one-at-a-time CG (~5 min)"
    )
    parser.add_argument(
        "--skip-medium-seq",
        action="store_true",
        help="skip pyDVL's sequential calculator on the medium case (~37 min on 2 shared cores; "
        "the report then says it was not run)",
    )
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset")
    results_md.add_output_args(parser)
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--later-round", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile", action="store_true", help="keep cProfile texts of the medium case's fills"
    )
    parser.add_argument(
        "--slow-cg-pairs",
        type=int,
        default=2,
        help="time pyDVL's one-at-a-time CG on this many (test batch, train batch) pairs and "
        "scale to all (0: run all; about 35 min here)",
    )
    parser.add_argument(
        "--small-reg", type=float, default=0.1, help="regularization of the small CG case"
    )
    parser.add_argument(
        "--merge", help="results JSON of an earlier run (--json): keep its cases, add these"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is None:
        return drive(args, argv)
    Path(args.out).write_text(json.dumps(run_as_worker(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
