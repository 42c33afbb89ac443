"""A/B timing of the speed benchmark's fills between two checkouts, in alternating processes.

Run from the repository root::

    python benchmarks/speed/ab_fill.py --tree old=/tmp/old_f91a8bb --tree new=. --pairs 7 \\
        --out benchmarks/_work/ab.json

Each pair runs one fresh worker process per checkout (``PYTHONPATH`` set to it; the worker
checks that ``infl_array`` is imported from there), the order alternating from pair to pair so
both sides see the same load. A worker builds the speed benchmark's seeded problems
(:mod:`speed_models`) and times, ``--reps`` times each, in wall and process CPU time (all
threads; far less sensitive to other processes' load than wall time):

- ``medium``: ``create`` + ``fill()`` of the 2,000 x 10,000 ``DirectInfluence`` matrix (MLP of
  1,539 parameters, float32) with blocks (256, 4096) and (2000, 10000), after one ``fit`` (timed
  apart) on the first :data:`FIT_ROWS` train points (the fill's cost does not depend on the
  fit's data: the Hessian is 1,539 x 1,539 either way), and once the pieces (all test factors,
  all train factors, one float32 product);
- ``small``: ``fit`` + ``create`` + ``fill()`` of the small CG case (771 parameters, 200 x
  400, blocks (50, 50), block CG at ``CgInfluence``'s defaults), and once all test factors in
  one call.

The seeded problems are built once (training the medium MLP costs more than its fills) and
saved to ``ab_fill_problems.pt`` in the scratch folder for every worker; delete it after
changing :mod:`speed_models`. The driver also takes the CPU time of each whole worker process
(``getrusage`` of children). It prints, per measurement and side, the median over processes
of each process's best repetition, and per pair the ratio of the second side to the first;
``--out`` keeps every figure, rewritten after each pair (a scratch comparison, not a record:
records come from ``bench_speed.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MEDIUM_BLOCKS = ((256, 4096), (2000, 10000))
FIT_ROWS = 200
"""Train points the medium case's Hessian is fitted on (the fill's cost does not depend on it)."""


# ---------------------------------------------------------------------- worker
def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _timed(fn: Any) -> tuple[float, float, Any]:
    """(wall, cpu, result) of one call of ``fn``."""
    import gc

    gc.collect()
    w0, c0 = _clock()
    out = fn()
    w1, c1 = _clock()
    return w1 - w0, c1 - c0, out


def _record(res: dict[str, Any], name: str, wall: float, cpu: float) -> None:
    res.setdefault(name, {"wall": [], "cpu": []})
    res[name]["wall"].append(wall)
    res[name]["cpu"].append(cpu)


def problems_file(scratch: str) -> Path:
    return Path(scratch) / "ab_fill_problems.pt"


def save_problems(scratch: str) -> None:
    """Build the seeded problems once (training the medium MLP takes longer than its fills)
    and save them for the workers: they are the same whichever checkout is measured."""
    from speed_models import problem_for, setup_torch

    torch = setup_torch()
    f = problems_file(scratch)
    if not f.exists():
        torch.save({c: problem_for(c, False) for c in ("medium", "small")}, f)


def load_problem(scratch: str, case: str) -> dict[str, Any]:
    from speed_models import setup_torch

    torch = setup_torch()
    prob: dict[str, Any] = torch.load(problems_file(scratch), weights_only=False)[case]
    return prob


def worker_medium(reps: int, work: Path, scratch: str) -> dict[str, Any]:
    from speed_models import ours_fill, setup_torch

    torch = setup_torch()
    from torch.utils.data import DataLoader, TensorDataset

    from infl_array.torch import DirectInfluence

    prob = load_problem(scratch, "medium")
    train, test = prob["train"], prob["test"]
    fit_loader = DataLoader(TensorDataset(train[0][:FIT_ROWS], train[1][:FIT_ROWS]), batch_size=100)
    ce = torch.nn.functional.cross_entropy
    infl = DirectInfluence(model=prob["model"], loss=ce, regularization=0.01)
    res: dict[str, Any] = {}
    wall, cpu, infl = _timed(lambda: infl.fit(fit_loader).prepare())
    _record(res, "medium fit (untimed part)", wall, cpu)
    for _ in range(reps):
        for b in MEDIUM_BLOCKS:
            wall, cpu, (_, arr) = _timed(lambda b=b: ours_fill(infl, train, test, b, work / "m"))
            _record(res, f"medium fill {b}", wall, cpu)
            del arr
    wall, cpu, tf = _timed(lambda: infl.test_factors(*test))
    _record(res, "medium test factors", wall, cpu)
    wall, cpu, trf = _timed(lambda: infl.train_factors(*train))
    _record(res, "medium train factors", wall, cpu)
    wall, cpu, _ = _timed(lambda: tf @ trf.T)
    _record(res, "medium product f32", wall, cpu)
    return res


def worker_small(reps: int, work: Path, scratch: str) -> dict[str, Any]:
    from speed_models import CG_TOL, SMALL_BLOCK, ours_fill, setup_torch

    torch = setup_torch()
    from torch.utils.data import DataLoader, TensorDataset

    from infl_array.torch import CgInfluence

    prob = load_problem(scratch, "small")
    train, test = prob["train"], prob["test"]
    loader = DataLoader(TensorDataset(*train), batch_size=prob["batch"])
    ce = torch.nn.functional.cross_entropy

    def fit() -> Any:
        cg = CgInfluence(prob["model"], ce, regularization=0.1, solve_simultaneously=True, **CG_TOL)
        return cg.fit(loader).prepare()

    def fit_fill() -> Any:
        return ours_fill(fit(), train, test, SMALL_BLOCK, work / "s")

    res: dict[str, Any] = {}
    for _ in range(reps):
        wall, cpu, _ = _timed(fit_fill)
        _record(res, "small fit+create+fill", wall, cpu)
    infl = fit()
    wall, cpu, _ = _timed(lambda: infl.test_factors(*test))
    _record(res, "small test factors", wall, cpu)
    return res


def run_worker(args: argparse.Namespace) -> None:
    tree = Path(args.tree[0]).resolve()
    sys.path.insert(0, str(tree))
    import infl_array

    where = Path(infl_array.__file__).resolve()
    if tree not in where.parents:
        raise SystemExit(f"infl_array was imported from {where}, not from the tree {tree}")
    sys.path.insert(1, str(HERE))  # speed_models (its harness puts this checkout after tree)
    work = Path(tempfile.mkdtemp(prefix="ab_fill_", dir=args.scratch))
    res: dict[str, Any] = {}
    try:
        for case in args.cases.split(","):
            worker = {"medium": worker_medium, "small": worker_small}[case]
            res |= worker(args.reps, work, args.scratch)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(res))


# ---------------------------------------------------------------------- driver
def one_process(name: str, tree: str, args: argparse.Namespace) -> dict[str, Any]:
    """One worker on ``tree``: its measurements, with the process's wall and CPU time."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="ab_fill_")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--tree", tree]
    cmd += ["--out", out, "--reps", str(args.reps), "--cases", args.cases]
    cmd += ["--scratch", args.scratch]
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, check=True, timeout=args.timeout)
        res: dict[str, Any] = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["process"] = {"wall": [time.perf_counter() - w0], "cpu": [cpu]}
    print(f"[{time.strftime('%H:%M:%S')}] {name}: " + _line(res), file=sys.stderr, flush=True)
    return res


def _line(res: dict[str, Any]) -> str:
    return "; ".join(
        f"{k} {min(v['wall']):.3f}/{min(v['cpu']):.3f}" for k, v in res.items() if "wall" in v
    )


def summarize(runs: dict[str, list[dict[str, Any]]], order: list[str]) -> dict[str, Any]:
    """Per measurement: each side's median over processes of the best repetition, and the
    per-pair ratios (second side / first side) with how many pairs the second side won."""
    a, b = order
    out: dict[str, Any] = {}
    for key in runs[a][0]:
        row: dict[str, Any] = {}
        for clock in ("wall", "cpu"):
            best = {s: [min(r[key][clock]) for r in runs[s]] for s in order}
            ratios = [y / x for x, y in zip(best[a], best[b], strict=True)]
            row[clock] = {
                a: statistics.median(best[a]),
                b: statistics.median(best[b]),
                f"{b}/{a} per pair": ratios,
                f"{b}/{a} median": statistics.median(ratios),
                f"{b} faster in": f"{sum(r < 1 for r in ratios)}/{len(ratios)} pairs",
            }
        out[key] = row
    return out


def drive(args: argparse.Namespace) -> None:
    trees = dict(t.split("=", 1) for t in args.tree)
    if len(trees) != 2:
        raise SystemExit(f"--tree twice, as NAME=PATH; got {args.tree}")
    order = list(trees)
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    save_problems(args.scratch)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in order}
    summary: dict[str, Any] = {}
    for p in range(args.pairs):
        for s in order if p % 2 == 0 else order[::-1]:
            runs[s].append(one_process(f"pair {p + 1}/{args.pairs} {s}", trees[s], args))
        # after every pair, so that a run stopped early (a timeout) keeps its complete pairs
        summary = summarize(runs, order)
        if args.out:
            record = {"trees": trees, "pairs": p + 1, "summary": summary, "runs": runs}
            Path(args.out).write_text(json.dumps(record, indent=1))
    for key, row in summary.items():
        for clock, v in row.items():
            a, b = order
            print(
                f"{key:28s} {clock:4s} {a} {v[a]:.3f} s  {b} {v[b]:.3f} s  "
                f"{b}/{a} {v[f'{b}/{a} median']:.3f} ({b} faster in {v[f'{b} faster in']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH (twice)")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--reps", type=int, default=2, help="repetitions in each process")
    parser.add_argument("--cases", default="medium,small")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker")
    parser.add_argument("--scratch", default=str(HERE.parent / "_work"), help="scratch folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
