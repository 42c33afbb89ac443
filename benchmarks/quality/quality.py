"""Attribution quality against retraining, side by side with pyDVL, Kronfluence and TRAK.

    nice -n 10 python benchmarks/quality/quality.py [--quick] [--cases logreg,mlp,cnn]
        [--subsets 100|case=N,...] [--methods SPEC] [--budget 600] [--fresh] [--no-write]

For each case (``quality_cases.CASES``: L2 softmax regression, a tanh MLP and a small CNN on
scikit-learn's digits) it trains the models, retrains on ``alpha = 0.5`` subsets and without
single points (cached under ``benchmarks/_work/quality/``: reruns never retrain), then runs
every method, each in a fresh process with a time budget:

* ours (``quality_ours.OURS``, through ``ia.InfluenceArray.create`` and numpy reads) in this
  environment;
* pyDVL 0.10 (``.venv-pydvl``, built by ``bash .ci/pydvl_env.sh``), Kronfluence 1.0.1
  (``.venv-kronfluence``) and TRAK 0.3.2 (``.venv-trak``, both built by
  ``bash benchmarks/peers/peer_envs.sh``) on the SAME saved models, data and settings
  (``benchmarks/peers/quality_*.py``).

and scores them with :mod:`infl_array.quality`: LDS (mean over test points, and its spread:
the standard deviation over 200 bootstrap resamples of the subsets), leave-one-out Pearson and
Spearman correlation (changes of the total test output, ``N_LOO`` points), detection AUC of
the 10% flipped labels by self-influence on a separate noisy model, and wall time (fit +
full matrix; fit + self-influence). Results (scores included) are cached per case, method and
settings (ours also per version of ``infl_array``'s code, in ``scores-*``; the peers' in
``peers-*``, which our code does not affect); ``--fresh`` recomputes them. The measured
values are saved as the record ``benchmarks/results/quality.json`` (``results_md.save_result``),
from which ``quality_report.render`` renders the section "Attribution quality (issue 12)" of
``benchmarks/RESULTS.md`` (``python benchmarks/render.py`` re-renders it without a run).

``--methods`` is a comma-separated list of ``peer:label`` (``ours:CG``), ``label`` (that label
in every peer: ``CG``) or ``peer`` (all of it: ``pyDVL``); default: everything.
``--quick`` uses 20 subsets instead of 100 and writes neither the record nor RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH), str(HERE)]  # the checkout; harness, results_md; this suite

import quality_cases as qc  # noqa: E402
import quality_damping as damping  # noqa: E402
import quality_report as report  # noqa: E402
from results_md import RESULTS  # noqa: E402

from infl_array.quality import detection_auc, lds_bootstrap, loo_correlation  # noqa: E402

N_SUBSETS_QUICK = 20
RANK = 50
"""Rank of the low-rank methods (Arnoldi, Nystroem), ours and pyDVL's."""
LISSA_MAXITER = 100
PROJECTION_DIM = 512
THREADS = 1

PEER_VENVS = Path(os.environ.get("PEER_VENV_DIR") or ROOT)
"""Where the peers' venvs are (``$PEER_VENV_DIR``, as ``peer_envs.sh`` builds them; default the
repository root); pyDVL's is always ``<repository>/.venv-pydvl`` (``.ci/pydvl_env.sh``)."""

# peer: (interpreter, script, how to build the environment, method labels)
PEERS: dict[str, tuple[Path, Path, str, list[str]]] = {
    "pyDVL": (
        ROOT / ".venv-pydvl/bin/python",
        BENCH / "peers/quality_pydvl.py",
        "bash .ci/pydvl_env.sh",
        ["Direct", "CG", "LiSSA", "Arnoldi", "EK-FAC", "K-FAC", "Nystroem", "DataInf"],
    ),
    "Kronfluence": (
        PEER_VENVS / ".venv-kronfluence/bin/python",
        BENCH / "peers/quality_kronfluence.py",
        "bash benchmarks/peers/peer_envs.sh kronfluence",
        ["EK-FAC", "K-FAC", "EK-FAC empirical"],
    ),
    "TRAK": (
        PEER_VENVS / ".venv-trak/bin/python",
        BENCH / "peers/quality_trak.py",
        "bash benchmarks/peers/peer_envs.sh trak",
        ["TRAK", "TRAK undamped"],
    ),
}


def lissa_scale(top_eigenvalue: float) -> float:
    """1.2 x the top eigenvalue of ``H + lambda*Id``, rounded up to 2 significant digits."""
    raw = 1.2 * top_eigenvalue
    step = 10 ** (np.floor(np.log10(raw)) - 1)
    return float(np.ceil(raw / step) * step)


def settings_for(
    case: qc.Case, meta: dict[str, Any], regularization: float | None = None
) -> dict[str, Any]:
    """What every method of a case gets (ours and the peers alike); ``regularization``
    replaces the case's damping (the damping sweep)."""
    top = max(meta[w]["hessian_eig_min_max"][1] for w in ("clean", "noisy"))
    n_params = meta["n_params"]
    reg = case.regularization if regularization is None else regularization
    return {
        "regularization": reg,
        "dtype": case.dtype,
        "rank": RANK,
        "lissa_maxiter": LISSA_MAXITER,
        "lissa_scale": lissa_scale(top + reg),
        "projection_dim": PROJECTION_DIM,
        # ours Projected's width (issue 22: equal widths); TRAK's X^T X is singular when the
        # projection is wider than the gradient, so never above the parameter count
        "trak_proj_dim": int(min(PROJECTION_DIM, 2 ** int(np.log2(n_params)))),
    }


def _source_hash() -> str:
    """Hash of the package's code that computes attributions (the scoring modules left out)."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "infl_array").rglob("*.py")):
        if not path.name.startswith("quality"):
            h.update(path.read_bytes())
    return h.hexdigest()[:10]


def result_folders(case: qc.Case, settings: dict[str, Any], fresh: bool) -> dict[str, Path]:
    """Where method results are cached: ours keyed by the settings and our code, the peers by
    the settings alone (their results do not depend on our code). ``fresh`` empties both."""
    folders = {}
    for kind, parts in (("ours", [settings, _source_hash()]), ("peers", [settings])):
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
        folders[kind] = case.folder() / f"{'scores' if kind == 'ours' else 'peers'}-{key}"
        folders[kind].mkdir(exist_ok=True)
        if fresh:
            for f in folders[kind].iterdir():
                f.unlink()
    return folders


def all_methods(log: Any) -> list[tuple[str, str]]:
    """Every ``(peer, label)``: ours that import (others skipped with a note), then the peers."""
    import quality_ours

    ours = [("ours", label) for label in quality_ours.available(log)]
    return ours + [(peer, label) for peer, spec in PEERS.items() for label in spec[3]]


def select(methods: list[tuple[str, str]], spec: str | None) -> list[tuple[str, str]]:
    if not spec:
        return methods
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [(p, m) for p, m in methods if any(w in (p, m, f"{p}:{m}") for w in wanted)]
    unknown = [w for w in wanted if not any(w in (p, m, f"{p}:{m}") for p, m in methods)]
    if unknown:
        raise SystemExit(
            f"--methods: no method matches {unknown}; known: "
            f"{', '.join(f'{p}:{m}' for p, m in methods)}"
        )
    return chosen


def subsets_per_case(spec: str) -> dict[str, int]:
    """``--subsets``: ``"60"`` (every case) or ``"logreg=100,mlp=60"`` (the rest: the maximum)."""
    out = dict.fromkeys(qc.CASES, qc.N_SUBSETS_MAX)
    try:
        if "=" not in spec:
            out = dict.fromkeys(qc.CASES, int(spec))
        else:
            for item in spec.split(","):
                name, n = item.split("=")
                if name not in qc.CASES:
                    raise SystemExit(f"--subsets: unknown case {name!r}; known: {list(qc.CASES)}")
                out[name] = int(n)
    except ValueError:
        raise SystemExit(f"--subsets: expected N or case=N,..., got {spec!r}") from None
    bad = {k: v for k, v in out.items() if not 3 <= v <= qc.N_SUBSETS_MAX}
    if bad:
        raise SystemExit(f"--subsets must lie in [3, {qc.N_SUBSETS_MAX}], got {bad}")
    return out


def ensure_env(peer: str, log: Any) -> bool:
    python, _, build, _ = PEERS[peer]
    if python.exists():
        return True
    log(f"  building the {peer} environment: {build}")
    rc = subprocess.run(build, shell=True, cwd=ROOT).returncode
    if rc != 0 or not python.exists():
        log(f"  note: {peer} environment could not be built ({build} exited {rc}); skipped")
        return False
    return True


def run_method(
    case: qc.Case,
    settings: dict[str, Any],
    peer: str,
    label: str,
    out: Path,
    budget: float,
    log: Any,
) -> dict[str, Any]:
    """Run one method in a fresh process (cached); return its result file's contents."""
    stem = out / f"{peer} {label}"
    npz, skip = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if npz.exists():
        with np.load(npz) as f:
            return {k: f[k] for k in f.files}
    if skip.exists():
        info = json.loads(skip.read_text())
        if info.get("budget", budget) >= budget:
            return info
    if peer == "ours":
        python, script = Path(sys.executable), HERE / "quality_ours.py"
    else:
        if not ensure_env(peer, log):
            return {"skipped": f"no {peer} environment"}
        python, script = PEERS[peer][0], PEERS[peer][1]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}
    cmd = [
        str(python),
        str(script),
        "--case-dir",
        str(case.folder()),
        "--settings",
        json.dumps(settings),
        "--methods",
        label,
        "--out",
        str(out),
        "--threads",
        str(THREADS),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=budget, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        info = {"skipped": f"over the time budget ({budget:.0f} s)", "budget": budget}
        skip.write_text(json.dumps(info))
        return info
    wall = time.perf_counter() - start
    if proc.returncode != 0 and not (npz.exists() or skip.exists()):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        info = {"skipped": f"exited {proc.returncode}: {' | '.join(tail)[:300]}"}
        skip.write_text(json.dumps(info))
        return info
    log(f"  {case.name}: {peer} {label}: {wall:.0f} s in all")
    return run_method(case, settings, peer, label, out, budget, log)


def score(result: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    """The metrics of one method's result."""
    if "skipped" in result:
        return {"skipped": result["skipped"]}
    scores = result["scores"]
    value, spread = lds_bootstrap(scores, data["subsets"], data["outputs"], n_boot=200, seed=0)
    loo = loo_correlation(scores, data["loo_deltas"], data["loo_indices"])
    auc = detection_auc(result["self_influence"], data["flipped"][data["detect_indices"]])
    return {
        "lds": value,
        "lds_spread": spread,
        "loo_pearson": loo.pearson,
        "loo_spearman": loo.spearman,
        "auc": auc,
        "seconds": float(result["fit_seconds"] + result["matrix_seconds"]),
        "self_seconds": float(result["self_seconds"]),
        "scores": scores,
    }


def run_case(case: qc.Case, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    meta = qc.prepare_models(case)
    n_subsets = N_SUBSETS_QUICK if args.quick else args.subsets[case.name]
    data = qc.retrain_outputs(case, n_subsets, log)
    prep_s = time.perf_counter() - t0
    settings = settings_for(case, meta)
    folders = result_folders(case, settings, args.fresh)
    rows = {}
    for peer, label in select(all_methods(log), args.methods):
        out = folders["ours" if peer == "ours" else "peers"]
        result = run_method(case, settings, peer, label, out, args.budget, log)
        rows[f"{peer} {label}"] = score(result, data)
        if "skipped" in rows[f"{peer} {label}"]:
            log(
                f"  note: {case.name}: {peer} {label} skipped: {rows[f'{peer} {label}']['skipped']}"
            )
    direct = rows.get("ours Direct", {}).get("scores")
    for row in rows.values():
        if direct is not None and "scores" in row:
            row["corr_direct"] = report.row_correlation(row["scores"], direct)
        row.pop("scores", None)
    sweep = None
    if case.name in args.sweep:

        def run_at(s: dict[str, Any], peer: str, label: str) -> dict[str, Any]:
            out = result_folders(case, s, fresh=False)["ours" if peer == "ours" else "peers"]
            return run_method(case, s, peer, label, out, args.budget, log)

        def with_damping(d: float) -> dict[str, Any]:
            return settings_for(case, meta, regularization=d)

        sweep = damping.sweep_case(settings, data, run_at, with_damping, log)
    return {
        "case": case.name,
        "sweep": sweep,
        "meta": meta,
        "settings": settings,
        "n_subsets": n_subsets,
        "n_loo": len(data["loo_indices"]),
        "n_detect": len(data["detect_indices"]),
        "n_flipped": int(data["flipped"][data["detect_indices"]].sum()),
        "prepare_seconds": prep_s,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 subsets; no RESULTS.md")
    parser.add_argument("--cases", default=",".join(qc.CASES))
    parser.add_argument(
        "--subsets",
        default=str(qc.N_SUBSETS_MAX),
        help="retrained subsets for LDS (the first ones): N for every case, or case=N,...",
    )
    parser.add_argument("--methods", default=None)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per method")
    parser.add_argument("--fresh", action="store_true", help="recompute cached method results")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--sweep",
        default=",".join(qc.CASES),
        help="cases whose fast methods also run over a grid of dampings ('' for none)",
    )
    args = parser.parse_args()
    args.subsets = subsets_per_case(args.subsets)
    args.sweep = [c for c in args.sweep.split(",") if c]
    unknown_sweep = [c for c in args.sweep if c not in qc.CASES]
    if unknown_sweep:
        raise SystemExit(f"--sweep: unknown {unknown_sweep}; known: {', '.join(qc.CASES)}")
    unknown = [c for c in args.cases.split(",") if c not in qc.CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {', '.join(qc.CASES)}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    import torch
    from harness import machine_info
    from results_md import load_now, save_result

    torch.set_num_threads(THREADS)
    load_start, start = load_now(), time.perf_counter()
    results = []
    for name in args.cases.split(","):
        log(f"case {name}")
        results.append(run_case(qc.CASES[name], args, log))
        log(report.case_table(results[-1]))
    wall = time.perf_counter() - start
    (qc.WORK / "results.json").write_text(json.dumps(results, indent=1, default=float))
    data = {"results": results, "threads": THREADS, "grid_factors": list(damping.GRID_FACTORS)}
    args.no_write = args.no_write or args.quick
    args.results = RESULTS
    save_result(
        "quality",
        report.SECTION,
        "quality/quality_report.py:render",
        json.loads(json.dumps(data, default=float)),
        args,
        script="quality/quality.py",
        argv=sys.argv[1:],
        wall_s=wall,
        machine=machine_info(["torch", "numpy"]),
        load_start=load_start,
    )
    log(report.targets(results))


if __name__ == "__main__":
    main()
