"""Large models (issue 9): per-layer backends against peers on a ladder of CNNs.

Usage: ``python benchmarks/large/bench_large.py [--quick] [--sizes 1e5,1e6,1e7] [--no-write]
[--json FILE]``. A ladder of CNNs on synthetic CIFAR-like data (3x32x32, 10 classes, see
``large_common.py``; about 1e5, 1e6 and 1e7 parameters), each trained briefly here, then, each
method in its own process (peak RSS per process), all with the same torch threads:

* the floor (``large_ours.py floor``): one forward+backward pass over all train and test points
  plus the ``n_test x n_train x 4096`` product;
* ``ProjectedInfluence(projection_dim=4096, "ekfac")``: fit, the matrix filled into a float32
  store (``InfluenceArray.create(...).fill()``; its train factors are the projected gradients
  the fit kept) and in memory, ``with_test`` on a new test set, and fit + fill again with
  ``reuse_fit_gradients=False`` (the fill passes over the train points itself);
* ``EkfacInfluence(update_diagonal=True)``: fit and the first rows of the matrix, each part
  timed; the full matrix is extrapolated where it is too large to run here;
* Kronfluence 1.0.1 EK-FAC pairwise scores (``.venv-kronfluence``), extrapolated from two
  query sizes where needed; TRAK 0.3.2 at the same width and
  damping (``lambda_reg = n_train * reg``, ``.venv-trak``); pyDVL 0.10's
  ``EkfacInfluence`` (refuses Conv2d) and ``CgInfluence`` on a few rows (``.venv-pydvl``).

All curvature uses the empirical Fisher (true labels) and the same absolute damping ``--reg``.
Per-row Spearman correlations are taken against ``EkfacInfluence`` on its rows. Writes the
section "Large models (issue 9)" of ``RESULTS.md`` (``results_md.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
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
from results_md import write_section

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/
ROOT = BENCH.parent
SECTION = "## Large models (issue 9)"
VENV = {
    "kronfluence": ROOT / ".venv-kronfluence" / "bin" / "python",
    "trak": ROOT / ".venv-trak" / "bin" / "python",
    "pydvl": ROOT / ".venv-pydvl" / "bin" / "python",
}
EPOCHS = {"1e5": 3, "1e6": 2, "1e7": 3}
KEEP: set[str] = set()
"""Methods whose last results (``_work/large/<method>-<size>.json``) are kept (``--keep``)."""


def prepare(sizes: list[str], n_train: int, n_test: int) -> dict[str, dict[str, float]]:
    """Data and trained models under ``benchmarks/_work/large`` (made once, then reused)."""
    WORK.mkdir(parents=True, exist_ok=True)
    if not data_path(n_train, n_test).exists():
        torch.save(make_data(n_train, n_test), data_path(n_train, n_test))
    data = torch.load(data_path(n_train, n_test))
    info = {}
    for size in sizes:
        torch.manual_seed(0)
        model = make_cnn(size)
        start = time.perf_counter()
        if model_path(size, n_train).exists():
            model.load_state_dict(torch.load(model_path(size, n_train)))
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(EPOCHS[size]):
                perm = torch.randperm(n_train)
                for s in range(0, n_train, 128):
                    idx = perm[s : s + 128]
                    opt.zero_grad()
                    F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx]).backward()
                    opt.step()
            torch.save(model.state_dict(), model_path(size, n_train))
        with torch.no_grad():
            acc = (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()
        info[size] = {
            "params": n_params(model),
            "test_acc": acc,
            "train_s": time.perf_counter() - start,
        }
    return info


def run(name: str, python: Path | str, script: str, args: dict[str, Any], timeout: float):
    """Run one worker; its JSON result with ``scores`` (or ``error``)."""
    out = WORK / f"{name}.json"
    if name.split("-")[0] in KEEP and out.exists():
        print(f"    {name}: the last run's result, kept (--keep)", flush=True)
        return {**read_result(out), "kept": True}
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "PYTHONPATH": str(ROOT)}
    cmd = [
        str(python),
        str(BENCH / script),
        *([name.split("-")[0]] if script == "large/large_ours.py" else []),
        json.dumps({**args, "out": str(out)}),
    ]
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
        if out.exists():  # a worker that writes its timings as it goes: what it finished
            partial = read_result(out)
            done = ", ".join(f"{k} {v:.0f} s" for k, v in partial["times"].items())
            error += f" (finished: {done})"
            return {**partial, "error": error}
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


QUERY_BATCH = 64  # Kronfluence's per_device_query_batch_size: test points per train pass


def rows_for(size: str, n_test: int, quick: bool) -> int:
    """EkfacInfluence's test rows where the whole is too big (its script extrapolates)."""
    if quick or size == "1e5":
        return n_test
    return 100 if size == "1e6" else 20


def kronfluence_rows(size: str, n_test: int, quick: bool) -> list[int]:
    """Kronfluence's query rows: all, else whole query batches (each one pass over the train
    data), so that extrapolating linearly in rows counts passes, neither more nor fewer."""
    if quick or size == "1e5" or n_test <= 2 * QUERY_BATCH:
        return [n_test]
    return [QUERY_BATCH] if size == "1e7" else [QUERY_BATCH, 2 * QUERY_BATCH]


def extrapolate(t1: float, t2: float, r1: int, r2: int, n: int) -> float:
    """Linear in the number of test rows through (r1, t1) and (r2, t2), at n."""
    if r1 == r2:
        return t2 * n / r2
    return t2 + (n - r2) * (t2 - t1) / (r2 - r1)


def bench_size(size: str, a: argparse.Namespace) -> dict[str, Any]:
    common = {"size": size, "n_train": a.n_train, "n_test": a.n_test, "threads": a.threads}
    r2 = rows_for(size, a.n_test, a.quick)
    res: dict[str, Any] = {}
    res["floor"] = run(
        f"floor-{size}",
        sys.executable,
        "large/large_ours.py",
        {**common, "dim": a.dim, "batch": 256},
        a.timeout,
    )
    res["projected"] = run(
        f"projected-{size}",
        sys.executable,
        "large/large_ours.py",
        {**common, "dim": a.dim, "reg": a.reg, "rows": a.n_test, "store": str(WORK / "store")},
        a.timeout,
    )
    res["ekfac"] = run(
        f"ekfac-{size}",
        sys.executable,
        "large/large_ours.py",
        {**common, "reg": a.reg, "rows": r2, "batch": 128 if size == "1e7" else 512},
        a.timeout,
    )
    if "kronfluence" in a.peers:
        k = run(
            f"kronfluence-{size}",
            VENV["kronfluence"],
            "peers/kronfluence_ekfac.py",
            {
                **common,
                "rows": kronfluence_rows(size, a.n_test, a.quick),
                "damping": a.reg,
                "empirical": True,
                "batch": 32 if size == "1e7" else 128,
                "query_batch": QUERY_BATCH,
            },
            a.timeout,
        )
        if "times" in k and "error" not in k:
            t = k["times"]
            ran = sorted(int(key.split("_")[1]) for key in t if key.startswith("scores_"))
            lo, hi = ran[0], ran[-1]  # a kept result may have run other rows than r1, r2
            t["extrapolated_matrix"] = extrapolate(
                t[f"scores_{lo}"], t[f"scores_{hi}"], lo, hi, a.n_test
            )
        res["kronfluence"] = k
    if "trak" in a.peers and size in a.trak_sizes:
        res["trak"] = run(
            f"trak-{size}",
            VENV["trak"],
            "peers/trak_scores.py",
            {**common, "rows": a.n_test, "dim": a.dim, "reg": a.reg, "batch": 100},
            a.timeout,
        )
    if "pydvl" in a.peers and (size in a.pydvl_sizes or a.quick):
        res["pydvl"] = run(
            f"pydvl-{size}",
            VENV["pydvl"],
            "peers/pydvl_large.py",
            {**common, "rows": 2, "reg": a.reg, "maxiter": a.cg_maxiter, "batch": 512},
            a.timeout,
        )
    reference = res["ekfac"].get("scores")
    for name, r in res.items():
        scores = r.get("scores")
        if reference is not None and scores is not None and name != "ekfac":
            n = min(len(reference), len(scores))
            rho = spearman_rows(scores[:n], reference[:n])
            r["spearman"] = {"mean": float(rho.mean()), "min": float(rho.min()), "rows": n}
        r.pop("scores", None)
    return res


def fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:,.1f}{unit}" if x < 100 else f"{x:,.0f}{unit}"


def report(info: dict, results: dict, a: argparse.Namespace, elapsed: float) -> str:
    lines = [
        a.section,
        "",
        f"`python benchmarks/large/bench_large.py {' '.join(sys.argv[1:])}` on "
        f"{platform.machine()}, {a.threads} torch threads, "
        f"torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; whole run {elapsed / 60:.0f} min. Synthetic CIFAR-like "
        f"data (3x32x32, 10 classes, 10% flipped train labels), n_train {a.n_train:,}, "
        f"n_test {a.n_test:,}, "
        f"projection width {a.dim}, empirical Fisher and absolute damping {a.reg} everywhere. "
        "Times in seconds, each method in its own process; peak RSS of that process. "
        '"matrix": the full n_test x n_train matrix after fit (ours: filled into a float32 store; '
        "`*`: extrapolated linearly in the number of test rows from the rows run, train side "
        "once, see the script). Spearman: mean (min) over rows of the per-row rank correlation "
        "with `EkfacInfluence` on the rows it ran. The machine is shared (load from other work), "
        "so absolute times are noisy; ratios are taken within one run."
        + (f" {a.note}" if a.note else ""),
        "",
    ]
    for size, res in results.items():
        i = info[size]
        lines += [
            f"### {i['params']:,} parameters ({size}; test accuracy {i['test_acc']:.2f} after "
            f"{EPOCHS[size]} epoch(s))",
            "",
            "| method | fit | matrix | fit + matrix | peak RSS | Spearman vs EK-FAC | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in res.items():
            lines.append(row(name, r, a))
        lines.append("")
        lines += targets(size, res)
    return "\n".join(lines)


def matrix_time(name: str, r: dict) -> tuple[float | None, float | None, str]:
    """(fit, matrix, note) of one method's result."""
    t = r.get("times", {})
    if name == "floor":
        return None, t.get("passes", 0) + t.get("product", 0), "fwd+bwd all points + 1 product"
    if name == "projected":
        nr = r.get("no_reuse", {})
        return (
            t.get("fit"),
            t.get("fill"),
            f"without reuse_fit_gradients: fit {fmt(nr.get('fit'))}, fill {fmt(nr.get('fill'))}"
            f"; in memory {fmt(t.get('memory'))}; width {r.get('width')}; with_test (new "
            f"test set, filled) {fmt(t.get('with_test'))} s = "
            f"{100 * t.get('with_test', 0) / max(t.get('fill', 1), 1e-9):.0f}% of the fill, "
            f"{r.get('with_test_train_factors')} train factor computations; bf16 train factors "
            f"would give {bf16_note(r.get('bf16'))}",
        )
    if name == "ekfac":
        note = f"rows run {r.get('rows')}; factor widths {r.get('widths')}"
        return t.get("fit"), t.get("extrapolated_matrix"), note
    if name == "kronfluence":
        return t.get("fit"), t.get("extrapolated_matrix"), f"rows run {r.get('rows')}"
    if name == "trak":
        return None, t.get("featurize", 0) + t.get("score", 0), "featurize + score"
    if name == "pydvl":
        return (
            t.get("fit"),
            None,
            f"CG {r.get('rows')} rows, maxiter {r.get('maxiter')}: {fmt(t.get('solve'))} s; "
            f"EK-FAC: {str(r.get('ekfac'))[:90]}",
        )
    return None, None, ""


def bf16_note(b: dict | None) -> str:
    if not b:
        return "n/a"
    return (
        f"max rel. error {b['max_rel_err']:.1e}, Spearman vs float32 {b['spearman_mean']:.4f} "
        f"(min {b['spearman_min']:.4f})"
    )


def row(name: str, r: dict, a: argparse.Namespace) -> str:
    if "error" in r:
        return f"| {name} | | | | | | failed: {r['error'][:150]} |"
    fit, matrix, note = matrix_time(name, r)
    if r.get("kept"):
        note += " (result of the previous run, kept)"
    run_rows = max(np.atleast_1d(r.get("rows", a.n_test)))
    star = "*" if name in ("ekfac", "kronfluence") and run_rows < a.n_test else ""
    total = None if matrix is None else (fit or 0) + matrix
    sp = r.get("spearman")
    rho = f"{sp['mean']:.3f} ({sp['min']:.3f}), {sp['rows']} rows" if sp else ""
    rss = f"{r['peak_rss_mib'] / 1024:.2f} GiB"
    return f"| {name} | {fmt(fit)} | {fmt(matrix)}{star} | {fmt(total)} | {rss} | {rho} | {note} |"


def targets(size: str, res: dict) -> list[str]:
    get = {n: matrix_time(n, r) for n, r in res.items() if "error" not in r}
    out = []
    if "projected" in get and "floor" in get:
        p, f = get["projected"], get["floor"][1]
        out.append(
            f"- ProjectedInfluence fill / floor: {p[1] / f:.2f}; fit + fill / floor: "
            f"{(p[0] + p[1]) / f:.2f} (target <= 2 at 1e7)"
        )
    if "projected" in get and "kronfluence" in get:
        p, k = get["projected"], get["kronfluence"]
        out.append(
            "- Kronfluence EK-FAC (fit + matrix) / ProjectedInfluence (fit + fill): "
            f"{(k[0] + k[1]) / (p[0] + p[1]):.1f}x (target >= 10x at 1e7)"
        )
    if "ekfac" in get and "kronfluence" in get:
        e, k = get["ekfac"], get["kronfluence"]
        out.append(
            "- Kronfluence EK-FAC / EkfacInfluence (fit + matrix): "
            f"{(k[0] + k[1]) / (e[0] + e[1]):.2f}x (target >= 1)"
        )
    if "projected" in res and "peak_rss_mib" in res["projected"]:
        out.append(
            "- ProjectedInfluence peak RSS: "
            f"{res['projected']['peak_rss_mib'] / 1024:.2f} GiB (target < 4 GiB at 1e7)"
        )
    t = res.get("projected", {}).get("times", {})
    if "with_test" in t and "fill" in t:
        w, nr = t["with_test"], res["projected"].get("no_reuse", {})
        out.append(
            f"- ProjectedInfluence with_test (new test set, filled) against the first job, fit "
            f"+ first fill: {100 * w / (t['fill'] + t.get('fit', 0.0)):.1f}% (target <= 10%); "
            f"against the first fill alone: {100 * w / t['fill']:.0f}% (that fill took its "
            "train side from the fit)"
            + (
                f", {100 * w / nr['fill']:.1f}% of a first fill that computes its train side "
                "(reuse_fit_gradients=False)"
                if "fill" in nr
                else ""
            )
        )
    return [*out, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1e5 and 1e6, 1,000 x 100 points")
    p.add_argument("--sizes", default=None, help="comma-separated ladder sizes (1e5,1e6,1e7)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--reg", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cg-maxiter", type=int, default=10)
    p.add_argument("--peers", default="kronfluence,trak,pydvl")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section", default=SECTION, help="RESULTS.md section head to (re)write")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--trak-sizes", default="1e5", help="sizes TRAK runs at (slow on CPU)")
    p.add_argument("--pydvl-sizes", default="1e5", help="sizes pyDVL's CG runs at")
    p.add_argument("--note", default="", help="a sentence added to the section's header")
    p.add_argument(
        "--keep",
        default="",
        help="comma-separated methods (floor,projected,ekfac,kronfluence,trak,pydvl) whose "
        "results of the last run with the same sizes and options are kept, not rerun",
    )
    a = p.parse_args()
    KEEP.update(m for m in a.keep.split(",") if m)
    a.trak_sizes = a.trak_sizes.split(",")
    a.pydvl_sizes = a.pydvl_sizes.split(",")
    a.n_train = a.n_train or (1000 if a.quick else 10_000)
    a.n_test = a.n_test or (100 if a.quick else 1000)
    sizes = (a.sizes or ("1e5,1e6" if a.quick else "1e5,1e6,1e7")).split(",")
    a.peers = [s for s in a.peers.split(",") if s]
    for s in sizes:
        if s not in LADDER:
            p.error(f"unknown size {s!r}; choose from {sorted(LADDER)}")
    for peer in a.peers:
        if not VENV[peer].exists():
            script = (
                ".ci/pydvl_env.sh" if peer == "pydvl" else f"benchmarks/peers/peer_envs.sh {peer}"
            )
            subprocess.run(["bash", str(ROOT / script.split()[0]), *script.split()[1:]], check=True)
    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    info = prepare(sizes, a.n_train, a.n_test)
    print(json.dumps(info, indent=1), flush=True)
    results = {size: bench_size(size, a) for size in sizes}
    text = report(info, results, a, time.perf_counter() - start)
    print(text)
    if a.json:
        Path(a.json).write_text(
            json.dumps({"info": info, "results": results}, indent=1, default=str)
        )
    if not a.no_write:
        write_section(a.section, text)


if __name__ == "__main__":
    main()
