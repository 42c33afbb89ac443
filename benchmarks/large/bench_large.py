"""Large models (issue 9): per-layer backends against peers on a ladder of CNNs.

Usage::

    nice -n 10 python benchmarks/large/bench_large.py [--sizes 1e5,1e6,1e7]
        [--repeats 1e5=3,1e6=1,1e7=3] [--once trak,pydvl] [--peers kronfluence,trak,pydvl]
        [--ekfac-block 1e6=256x4096] [--pydvl-budget 300] [--not-run '1e7=why'] [--no-write]

A ladder of CNNs on synthetic CIFAR-like data (3x32x32, 10 classes, see ``large_common.py``;
about 1e5, 1e6 and 1e7 parameters), each trained briefly here, then every method in its own
process (peak RSS per process), all with the same torch threads, in ONE invocation: each
repetition runs the floor and every repeated method back to back (interleaved), so the ratios
compare runs minutes apart, under the same load; the slow peers (``--once``) run once after
the repetitions. The record is saved after each size, so a run cut off keeps the sizes done.
Methods (``large_ours.py`` and ``../peers/``):

* ``floor``: one forward+backward pass over all train and test points plus one
  ``n_test x n_train x dim`` product;
* ``projected``: ``ProjectedInfluence(projection_dim=dim, "ekfac")``: fit, fill into a float32
  store, in memory, ``with_test``, and fit + fill with ``reuse_fit_gradients=False``;
* ``ekfac``: ``EkfacInfluence(update_diagonal=True)`` THROUGH THE ARRAY at every size
  (``InfluenceArray.create(...).fill()``, never the backend's factor functions), with the block
  shape ``create`` chooses when none is named (from the backend's ``memory_budget`` and the
  bytes of one sample's factors, as a user gets it) unless ``--ekfac-block`` names one; the
  record says which shape and how it was chosen. (``--ekfac-rows SIZE=ROWS``: only the first
  two block rows are read through the array and the rest is an estimate, labelled so.)
* ``kronfluence``: Kronfluence 1.0.1 EK-FAC pairwise scores, query batch the largest that
  fits (its docs' CIFAR-10 example: ``per_device_query_batch_size=1000``);
* ``trak``: TRAK 0.3.2 at the same projection width, its damping set the same way as ours
  (relative to its curvature's mean eigenvalue, see ``peers/trak_scores.py``);
* ``pydvl``: pyDVL 0.10's ``CgInfluence`` through its batched calculator
  (``SequentialInfluenceCalculator``) on test rows one at a time until ``--pydvl-budget``
  seconds have passed (at most ``--pydvl-rows``; a hard ``--pydvl-timeout``), its full matrix
  extrapolated from them (labelled), and whether its ``EkfacInfluence`` takes the CNN.

Sizes named in ``--not-run SIZE=REASON`` are recorded as not run with that reason (the record
says so rather than leaving them out).

All curvature is the empirical Fisher (true labels) with the same absolute damping ``--reg``
(TRAK: the same damping relative to its curvature). The record ``benchmarks/results/large.json``
holds every repetition's timings; the per-row Spearman correlations and the workers' full
outputs go to ``benchmarks/results/raw/large.json.gz``; ``large_report.render`` renders the
section "Large models (issue 9)" of ``RESULTS.md`` from the record alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
import results_md
from harness import machine_info
from large_common import (
    LADDER,
    WORK,
    data_path,
    make_cnn,
    make_data,
    model_path,
    n_params,
    spearman_rows,
)
from large_report import SECTION, peer_configs
from results_md import RESULTS_DIR, add_output_args, load_now, save_result

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/
ROOT = BENCH.parent
PEER_VENVS = Path(os.environ.get("PEER_VENV_DIR") or ROOT)
"""Where ``peer_envs.sh`` built the peers' venvs (``$PEER_VENV_DIR``, default the repository)."""
VENV = {
    "kronfluence": PEER_VENVS / ".venv-kronfluence" / "bin" / "python",
    "trak": PEER_VENVS / ".venv-trak" / "bin" / "python",
    "pydvl": ROOT / ".venv-pydvl" / "bin" / "python",
}
METHODS = ("floor", "projected", "ekfac", "kronfluence", "trak", "pydvl")
EPOCHS = {"1e5": 3, "1e6": 2, "1e7": 3}


def train(size: str, data: dict[str, torch.Tensor], n_train: int, seed: int) -> torch.nn.Module:
    """The ladder model of ``size`` trained (or loaded) with ``seed``."""
    torch.manual_seed(seed)
    model = make_cnn(size)
    path = model_path(size, n_train, seed)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS[size]):
        perm = torch.randperm(n_train)
        for s in range(0, n_train, 128):
            idx = perm[s : s + 128]
            opt.zero_grad()
            F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx]).backward()
            opt.step()
    torch.save(model.state_dict(), path)
    return model


def prepare(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Data and trained models under ``benchmarks/_work/large`` (made once, then reused)."""
    WORK.mkdir(parents=True, exist_ok=True)
    n_train, n_test = a.n_train, a.n_test
    if not data_path(n_train, n_test).exists():
        torch.save(make_data(n_train, n_test), data_path(n_train, n_test))
    data = torch.load(data_path(n_train, n_test))
    info = {}
    for size in a.sizes:
        start = time.perf_counter()
        model = train(size, data, n_train, 0)
        with torch.no_grad():
            acc = (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()
        info[size] = {
            "params": n_params(model),
            "test_acc": acc,
            "epochs": EPOCHS[size],
            "train_s": time.perf_counter() - start,
        }
    return info


def run(name: str, python: Path | str, script: str, args: dict[str, Any], timeout: float):
    """Run one worker; its JSON result with ``scores`` (or ``error``)."""
    out = WORK / f"{name}.json"
    out.unlink(missing_ok=True)
    out.with_suffix(".npy").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "PYTHONPATH": str(ROOT)}
    kind = name.split("-")[0]
    cmd = [
        str(python),
        str(BENCH / script),
        *([kind] if script == "large/large_ours.py" else []),
        json.dumps({**args, "out": str(out)}),
    ]
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
        if out.exists():  # a worker that writes its timings as it goes: what it finished
            return {**read_result(out), "error": error}
        return {"error": error}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"    failed: {' | '.join(tail)}", flush=True)
        return {"error": " | ".join(tail)[-300:]}
    result = {**read_result(out), "wall_s": wall}
    print(f"    done in {wall:.0f} s: {result.get('times')}", flush=True)
    return result


def read_result(out: Path) -> dict[str, Any]:
    """A worker's JSON result with its ``scores`` (None where it wrote none)."""
    result = json.loads(out.read_text())
    npy = out.with_suffix(".npy")
    result["scores"] = np.load(npy) if npy.exists() else None
    return result


def per_size(spec: str, sizes: list[str], default: int, what: str) -> dict[str, int]:
    """``"1e5=3,1e7=1"`` -> a count per size (``default`` for the sizes not named).

    >>> per_size("1e7=1", ["1e5", "1e7"], 3, "--repeats")
    {'1e5': 3, '1e7': 1}
    """
    out = dict.fromkeys(sizes, default)
    for item in filter(None, spec.split(",")):
        size, sep, n = item.partition("=")
        if not sep or size not in LADDER or not n.isdigit() or int(n) < 1:
            raise SystemExit(
                f"{what}: expected SIZE=N,... (SIZE in {sorted(LADDER)}), got {item!r}"
            )
        out[size] = int(n)
    return out


def block_shapes(spec: str, sizes: list[str]) -> dict[str, list[int]]:
    """``"1e6=256x4096"`` -> ``{"1e6": [256, 4096]}`` (sizes not named: create() chooses).

    >>> block_shapes("1e6=256x4096", ["1e5", "1e6"])
    {'1e6': [256, 4096]}
    """
    out: dict[str, list[int]] = {}
    for item in filter(None, spec.split(",")):
        size, _, shape = item.partition("=")
        dims = shape.split("x")
        if size not in sizes or len(dims) != 2 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise SystemExit(
                f"--ekfac-block: expected SIZE=ROWSxCOLS,... (SIZE among {sizes}, positive "
                f"ints), got {item!r}"
            )
        out[size] = [int(d) for d in dims]
    return out


def not_run(items: list[str]) -> dict[str, str]:
    """``["1e7=why"]`` -> ``{"1e7": "why"}``: sizes left out of this run, with the reason."""
    out = {}
    for item in items:
        size, sep, reason = item.partition("=")
        if not sep or size not in LADDER or not reason.strip():
            raise SystemExit(
                f"--not-run: expected SIZE=REASON (SIZE in {sorted(LADDER)}), got {item!r}"
            )
        out[size] = reason.strip()
    return out


def jobs(size: str, a: argparse.Namespace) -> dict[str, tuple[Path | str, str, dict[str, Any]]]:
    """Each method of ``size`` that runs: (interpreter, script, arguments)."""
    common = {"size": size, "n_train": a.n_train, "n_test": a.n_test, "threads": a.threads}
    store = str(WORK / "store")
    ekfac_rows = a.ekfac_rows[size]
    ekfac_block = [ekfac_rows, 4096] if ekfac_rows < a.n_test else a.ekfac_block.get(size)
    cfg = peer_configs(size, a.n_test, a.dim, a.kronfluence_query_batch)
    out: dict[str, tuple[Path | str, str, dict[str, Any]]] = {
        "floor": (sys.executable, "large/large_ours.py", {**common, "dim": a.dim, "batch": 256}),
        "projected": (
            sys.executable,
            "large/large_ours.py",
            {**common, "dim": a.dim, "reg": a.reg, "rows": a.n_test, "store": store},
        ),
        "ekfac": (
            sys.executable,
            "large/large_ours.py",
            {
                **common,
                "reg": a.reg,
                "rows": ekfac_rows,
                "block_shape": ekfac_block,
                "memory_budget": a.ekfac_memory_budget,
                "store": store,
            },
        ),
    }
    if "kronfluence" in a.peers and size in a.kronfluence_sizes:
        out["kronfluence"] = (
            VENV["kronfluence"],
            "peers/kronfluence_ekfac.py",
            {
                **common,
                "rows": [a.n_test],
                "damping": a.reg,
                "empirical": True,
                "batch": 128,
                "query_batch": cfg["kronfluence"]["query_batch"],
            },
        )
    # pyDVL (time-limited) before TRAK (the slow one): a cut-off run loses less
    if "pydvl" in a.peers and size in a.pydvl_sizes:
        out["pydvl"] = (
            VENV["pydvl"],
            "peers/pydvl_large.py",
            {
                **common,
                "rows": a.pydvl_rows,
                "reg": a.reg,
                "maxiter": a.cg_maxiter,
                "batch": 512,
                "budget_s": a.pydvl_budget,
            },
        )
    if "trak" in a.peers and size in a.trak_sizes:
        out["trak"] = (
            VENV["trak"],
            "peers/trak_scores.py",
            {
                **common,
                "rows": a.n_test,
                "dim": a.dim,
                "reg": a.reg,
                "batch": a.trak_batch[size],
                "checkpoints": a.trak_checkpoints,
            },
        )
    return out


def bench_size(
    size: str,
    a: argparse.Namespace,
    raw: dict[str, Any],
    saved: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every repetition of the repeated methods at ``size``, interleaved (each repetition runs
    them back to back), then the methods run once; Spearman against EK-FAC's rows. After each
    run, ``saved`` gets the size's result so far (``complete`` False until the last run), so a
    run cut off keeps every method run it finished."""
    todo = jobs(size, a)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in todo}
    scores: dict[str, np.ndarray] = {}
    order = [(rep, m) for rep in range(a.repeats[size]) for m in todo if m not in a.once]
    order += [(0, m) for m in todo if m in a.once]
    result: dict[str, Any] = {}
    for i, (_, method) in enumerate(order):
        if method == "trak":  # TRAK's ensemble: further independently trained models
            data = torch.load(data_path(a.n_train, a.n_test))
            for seed in range(1, a.trak_checkpoints):
                train(size, data, a.n_train, seed)
        python, script, args = todo[method]
        timeout = min(a.timeout, a.pydvl_timeout) if method == "pydvl" else a.timeout
        r = run(f"{method}-{size}", python, script, args, timeout)
        s = r.pop("scores", None)
        if s is not None:
            scores.setdefault(method, s)
        runs[method].append(r)
        result = size_result(size, a, runs, scores, raw, complete=i == len(order) - 1)
        saved(result)
    return result


def size_result(
    size: str,
    a: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    scores: dict[str, np.ndarray],
    raw: dict[str, Any],
    complete: bool,
) -> dict[str, Any]:
    """A size's runs so far, with Spearman against EK-FAC's rows (per-row values into ``raw``)."""
    reference = scores.get("ekfac")
    spearman: dict[str, Any] = {}
    raw_rows: dict[str, list[float]] = {}
    for method, s in scores.items():
        if reference is None or method == "ekfac":
            continue
        n = min(len(reference), len(s))
        rho = spearman_rows(s[:n], reference[:n])
        spearman[method] = {"mean": float(rho.mean()), "min": float(rho.min()), "rows": n}
        raw_rows[method] = [round(float(x), 6) for x in rho]
    done = {m: rs for m, rs in runs.items() if rs}
    raw[size] = {"per_row_spearman_vs_ekfac": raw_rows, "runs": done}
    out = {"runs": done, "spearman": spearman, "repeats": a.repeats[size], "complete": complete}
    if not complete:
        out["not_yet_run"] = [m for m, rs in runs.items() if not rs]
    return out


def write_raw(raw: dict[str, Any]) -> Path:
    """The workers' full outputs and per-row correlations, gzipped, next to the records."""
    path = RESULTS_DIR / "raw" / "large.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump(raw, f, default=str)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1e5 and 1e6, 1,000 x 100 points")
    p.add_argument("--sizes", default=None, help="comma-separated ladder sizes (1e5,1e6,1e7)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--reg", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", default="", help="repetitions per size, SIZE=N,... (default 3)")
    p.add_argument("--once", default="trak,pydvl", help="methods run once, after the repetitions")
    p.add_argument(
        "--ekfac-rows", default="", help="SIZE=ROWS: EK-FAC only reads two ROWS-row block rows"
    )
    p.add_argument(
        "--ekfac-block",
        default="",
        help="SIZE=ROWSxCOLS,...: EK-FAC's block shape (default: the one create() chooses)",
    )
    p.add_argument(
        "--ekfac-memory-budget", type=float, default=None, help="EK-FAC's memory_budget in GiB"
    )
    p.add_argument("--cg-maxiter", type=int, default=10)
    p.add_argument("--pydvl-rows", type=int, default=200, help="at most this many CG rows")
    p.add_argument(
        "--pydvl-budget", type=float, default=300, help="no CG row starts after this many s"
    )
    p.add_argument("--pydvl-timeout", type=float, default=1200, help="pyDVL's hard timeout (s)")
    p.add_argument(
        "--not-run",
        action="append",
        default=[],
        help="SIZE=REASON: a size not run this time and why (recorded)",
    )
    p.add_argument("--kronfluence-query-batch", type=int, default=1000)
    p.add_argument("--peers", default="kronfluence,trak,pydvl")
    p.add_argument("--kronfluence-sizes", default="1e5,1e6", help="sizes Kronfluence runs at")
    p.add_argument(
        "--trak-checkpoints", type=int, default=3, help="TRAK's independently trained models"
    )
    p.add_argument(
        "--trak-batch",
        default="1e6=500,1e7=250",
        help="SIZE=N,...: TRAK's featurize/score batch (default 1000; its CPU projector "
        "regenerates its matrix per batch, so large, but a batch holds N per-sample gradients)",
    )
    p.add_argument("--trak-sizes", default="1e5,1e6", help="sizes TRAK runs at (slow on CPU)")
    p.add_argument("--pydvl-sizes", default="1e5,1e6", help="sizes pyDVL's CG runs at")
    p.add_argument("--timeout", type=float, default=3600)
    add_output_args(p)
    a = p.parse_args(argv)
    a.n_train = a.n_train or (1000 if a.quick else 10_000)
    a.n_test = a.n_test or (100 if a.quick else 1000)
    a.sizes = (a.sizes or ("1e5,1e6" if a.quick else "1e5,1e6,1e7")).split(",")
    for s in a.sizes:
        if s not in LADDER:
            p.error(f"unknown size {s!r}; choose from {sorted(LADDER)}")
    a.repeats = per_size(a.repeats, a.sizes, 3, "--repeats")
    rows = per_size(a.ekfac_rows, a.sizes, a.n_test, "--ekfac-rows")
    a.ekfac_rows = {s: min(r, a.n_test) for s, r in rows.items()}
    a.ekfac_block = block_shapes(a.ekfac_block, a.sizes)
    if a.ekfac_memory_budget is not None:
        a.ekfac_memory_budget = int(a.ekfac_memory_budget * (1 << 30))
    a.trak_batch = per_size(a.trak_batch, a.sizes, 1000, "--trak-batch")
    a.not_run = not_run(a.not_run)
    a.sizes = [s for s in a.sizes if s not in a.not_run]
    a.once = {m for m in a.once.split(",") if m}
    a.peers = [s for s in a.peers.split(",") if s]
    for name in ("kronfluence_sizes", "trak_sizes", "pydvl_sizes"):
        setattr(a, name, getattr(a, name).split(","))
    unknown = (a.once | set(a.peers)) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    return a


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    for peer in a.peers:
        if not VENV[peer].exists():
            build = ".ci/pydvl_env.sh" if peer == "pydvl" else "benchmarks/peers/peer_envs.sh"
            subprocess.run(
                ["bash", str(ROOT / build), *([peer] if peer != "pydvl" else [])],
                check=True,
                env={**os.environ, "PEER_VENV_DIR": str(PEER_VENVS)},
            )
    torch.set_num_threads(a.threads)
    # the commit and dirtiness of the code that runs, taken now: the record is saved after
    # every method run, and each save's own outputs (this record, RESULTS.md, the raw file)
    # must not mark the later saves dirty
    at_start = results_md.git_commit()
    results_md.git_commit = lambda: at_start
    load_start, start = load_now(), time.perf_counter()
    info = prepare(a)
    print(json.dumps(info, indent=1), flush=True)
    raw: dict[str, Any] = {}
    sizes: dict[str, Any] = {}

    def saved(size: str) -> Callable[[dict[str, Any]], None]:
        def keep(result: dict[str, Any]) -> None:
            sizes[size] = result
            save(a, argv, info, sizes, raw, load_start, time.perf_counter() - start)

        return keep

    for size in a.sizes:  # saved after each method run: a cut-off run keeps the runs done
        bench_size(size, a, raw, saved(size))


def save(
    a: argparse.Namespace,
    argv: list[str],
    info: dict[str, Any],
    sizes: dict[str, Any],
    raw: dict[str, Any],
    load_start: list[float],
    wall_s: float,
) -> None:
    """Write the record (the sizes done so far, the planned ones named) and the raw outputs."""
    settings = {
        "n_train": a.n_train,
        "n_test": a.n_test,
        "dim": a.dim,
        "reg": a.reg,
        "threads": a.threads,
        "torch": torch.__version__,
        "once": sorted(a.once),
        "ekfac_rows": a.ekfac_rows,
        "ekfac_block": a.ekfac_block,
        "ekfac_memory_budget": a.ekfac_memory_budget,
        "cg_maxiter": a.cg_maxiter,
        "pydvl_rows": a.pydvl_rows,
        "pydvl_budget_s": a.pydvl_budget,
        "pydvl_timeout_s": a.pydvl_timeout,
        "not_run": a.not_run,
        "kronfluence_query_batch": a.kronfluence_query_batch,
        "trak_checkpoints": a.trak_checkpoints,
        "trak_batch": a.trak_batch,
        "trak_finalize_once": True,
        "planned_sizes": a.sizes,
    }
    data = {"settings": settings, "models": info, "sizes": sizes}
    if not a.no_write:
        print(f"wrote {write_raw(raw)}", flush=True)
    save_result(
        "large",
        SECTION,
        "large/large_report.py:render",
        data,
        a,
        script="large/bench_large.py",
        argv=argv,
        wall_s=wall_s,
        machine=machine_info(["torch", "numpy"]),
        load_start=load_start,
    )


if __name__ == "__main__":
    main()
