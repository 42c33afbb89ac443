"""Language models (issue 24): throughput, peak RSS, LDS and planted duplicates, ours vs peers.

Usage (niced; one invocation runs everything and writes ``benchmarks/results/lm.json`` and the
section of RESULTS.md)::

    PEER_VENV_DIR=/work/venvs nice -n 10 python benchmarks/lm/bench_lm.py

1. :func:`lm_prepare.prepare`: a 2-layer GPT-2 config (``transformers``, byte tokens),
   pretrained here on ``--pretrain`` sequences of 64 bytes of the standard library's ``.py``
   sources (later files), then trained from there on the train sequences (earlier files; the
   queries are random sequences of the same files, ``--dups`` of them planted in the train
   set); saved (state_dict, the pretrained start + config + data) to one file that every
   worker loads.
2. One worker process per method, each in its own environment, same model, data and threads:
   ours (``EkfacInfluence``, ``ProjectedInfluence``: ``lm_ours.py``, through
   ``ia.InfluenceArray.create`` + ``fill`` + a full read), bergson (``lm_bergson.py``, gradient
   store + FAISS), Kronfluence 1.0.1 (``lm_kronfluence.py``), dattri (``lm_dattri.py``). Each
   computes the full ``(n_query, n_train)`` matrix; its time (fit + matrix), peak RSS and
   matrix come back; a failure keeps its exact error. ``projected_mmap32`` (in ``--methods``)
   is ours' projected worker again with glibc's mmap threshold at 32 MiB (:data:`MMAP_32`),
   to show what the 1 MiB threshold of ``infl_array.engine.allocator`` costs.
3. :func:`lm_prepare.retrain`: ``--retrainings`` models on random halves of the train set,
   each trained as the base model was (from the pretrained start, the full training's order
   less the left-out sequences); the LDS of each method against their query losses (as they
   are, and with each model's mean query loss taken out), and the rank of each planted
   duplicate in its query's row.
4. Coverage of every trainable parameter on GPT-2, Llama and GPT-NeoX configs
   (:func:`lm_coverage.coverage`).

The retrainings are cached one file per model; ``--retrain-helper`` (same arguments) runs
them from the last model down in a second process while the run measures the methods (the
run then retrains only what is missing); ``--retrain-beside`` makes the run start that
helper itself once the base model is trained (and the record says so).

Raw outputs (each worker's JSON, log tail and matrix) go compressed to the work folder while
the run goes, and to ``benchmarks/results/raw/lm/`` after the record is saved (so a run from a
clean commit records itself clean).

The driver runs with ``--threads`` torch threads too (the base model's training and the
retrainings): torch's default, one thread per core, crawls on a machine whose cores other
processes share (the spinning threads wait on each other).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import WORK, machine_info
from lm_coverage import coverage
from lm_prepare import prepare, retrain
from results_md import RESULTS_DIR, add_output_args, load_now, save_result

from infl_array.quality import lds, lds_bootstrap, lds_per_test

HERE = Path(__file__).resolve().parent
SECTION = "## Language models (issue 24)"
RAW = RESULTS_DIR / "raw" / "lm"
STAGE = WORK / "lm" / "raw"
VENVS = Path(os.environ.get("PEER_VENV_DIR", HERE.parents[1]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--dups", type=int, default=10, help="queries planted in the train set")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="epochs on the train sequences")
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr on the train sequences")
    p.add_argument(
        "--pretrain",
        type=int,
        default=10_000,
        help="pretraining sequences (later files): the model every training starts from (0: "
        "random init)",
    )
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--retrainings", type=int, default=40)
    p.add_argument("--subset-fraction", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--damping",
        type=float,
        default=0.1,
        help="every preconditioned method's damping, relative to each layer's mean curvature "
        "eigenvalue (Kronfluence's heuristic rule; ours relative_regularization=True, dattri's "
        "damping)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs of each method, round-robin (times: the median; matrix: the first)",
    )
    p.add_argument(
        "--repeats-reason",
        default="",
        help="why fewer than 3 repeats (shown in the section when --repeats < 3)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="minutes the whole run may take (0: no limit): a timed round starts only if it "
        "would end (by the last round's time) before the limit less a reserve, and no "
        "retraining starts past the limit less a reserve; the record says what was run",
    )
    p.add_argument("--projection-dim", type=int, default=2048, help="width of projected methods")
    p.add_argument("--method-batch", type=int, default=64, help="batch of the attributions")
    p.add_argument("--worker-timeout", type=int, default=1800)
    p.add_argument("--retrain-minutes", type=float, default=40.0, help="stop starting after")
    p.add_argument("--methods", default="ekfac,projected,bergson,kronfluence,dattri")
    p.add_argument(
        "--after-retraining",
        default="",
        help="methods run after the retrainings (the slowest, so that a timeout costs no LDS)",
    )
    p.add_argument(
        "--retrain-helper",
        action="store_true",
        help="only retrain, from the last model down, until --retrain-minutes from now, and "
        "exit (no record): a second process that shares the retrainings with a run",
    )
    p.add_argument(
        "--retrain-beside",
        action="store_true",
        help="start a --retrain-helper process beside the timed runs (the record says so)",
    )
    p.add_argument(
        "--retrain-from", type=int, default=None, help="the helper's first model (default last)"
    )
    add_output_args(p)
    return p.parse_args(argv)


def methods(a: argparse.Namespace, data: Path, store: Path) -> dict[str, tuple[Path, dict]]:
    """Each method's interpreter and worker arguments (same data, threads and widths)."""
    common = {"data": str(data), "threads": a.threads, "batch": a.method_batch}
    side = round((a.projection_dim / (4 * a.layers)) ** 0.5)  # bergson: per module
    main_py = Path(sys.executable)
    return {
        "ekfac": (main_py, {**common, "kind": "ekfac", "damping": a.damping}),
        "projected": (
            main_py,
            {
                **common,
                "kind": "projected",
                "damping": a.damping,
                "projection_dim": a.projection_dim,
            },
        ),
        "projected_mmap32": (
            main_py,
            {
                **common,
                "kind": "projected",
                "damping": a.damping,
                "projection_dim": a.projection_dim,
                "env": {"MALLOC_MMAP_THRESHOLD_": str(MMAP_32)},
            },
        ),
        "bergson": (VENVS / ".venv-bergson/bin/python", {**common, "projection_dim": side}),
        "kronfluence": (
            VENVS / ".venv-kronfluence-lm/bin/python",
            {**common, "strategy": "ekfac", "query_batch": a.n_test, "damping": a.damping},
        ),
        "dattri": (
            VENVS / ".venv-dattri/bin/python",
            {**common, "projection_dim": a.projection_dim, "damping": a.damping},
        ),
    }


MMAP_32 = 32 << 20
"""glibc's mmap threshold of the variant ``projected_mmap32`` (``MALLOC_MMAP_THRESHOLD_``, a
threshold the user chose, which ``infl_array.engine.allocator`` leaves alone): 32 MiB, the most
glibc's own dynamic threshold rises to, instead of the 1 MiB the allocator holds once a memory
budget is made. Same worker, same matrix; its time shows what that 1 MiB costs here."""

SCRIPTS = {
    "ekfac": "lm_ours.py",
    "projected": "lm_ours.py",
    "projected_mmap32": "lm_ours.py",
    "bergson": "lm_bergson.py",
    "kronfluence": "lm_kronfluence.py",
    "dattri": "lm_dattri.py",
}


def run_worker(
    name: str, python: Path, args: dict, work: Path, timeout: int, keep_raw: bool = True
) -> tuple[dict, np.ndarray | None]:
    """One method in its own process; its result, or its exact error, and its matrix (raw
    outputs kept under ``STAGE`` when ``keep_raw``, :func:`publish_raw` moves them to ``RAW``)."""
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    args = {**args, "store": str(work / f"{name}-store"), "out": str(out)}
    if not python.exists():
        return {"error": f"no interpreter {python} (build it: peer_envs.sh)"}, None
    extra = args.pop("env", {})  # the worker's own environment variables (not its arguments)
    cmd = [str(python), str(HERE / SCRIPTS[name]), json.dumps(args)]
    threads = str(args["threads"])
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": threads, **extra}
    start, started_at = time.perf_counter(), time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, rc = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s", -9
    wall = time.perf_counter() - start
    STAGE.mkdir(parents=True, exist_ok=True)
    if keep_raw or rc != 0:
        with gzip.open(STAGE / f"{name}.log.gz", "wt") as f:
            f.write(log[-20000:])
    if rc != 0 or not out.exists():
        lines = [x for x in log.strip().splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit {rc}", "exit": rc, "wall_s": wall}, None
    result = json.loads(out.read_text())
    result["wall_s"], result["started_at"] = wall, started_at
    if not keep_raw:
        return result, None
    with gzip.open(STAGE / f"{name}.json.gz", "wt") as f:
        f.write(json.dumps(result, indent=1))
    scores = np.load(f"{out}.npy")
    with gzip.open(STAGE / f"{name}.npy.gz", "wb") as f:
        np.save(f, scores)
    return result, scores


def publish_raw() -> None:
    """Move the raw outputs of this run from ``STAGE`` to ``RAW`` (after the record)."""
    RAW.mkdir(parents=True, exist_ok=True)
    for path in sorted(STAGE.glob("*.gz")):
        shutil.move(path, RAW / path.name)


NOTES = {
    "bergson": (
        "bergson 2.5.1 as `bergson build` + query run it, called as a library: "
        "`collect_gradients` (projected per-sequence gradients, {side} x {side} per module, "
        "no preconditioner, its defaults) for train and queries, then `Attributor` with "
        "`FaissConfig('Flat')`, k = all train sequences. It tracks the blocks' `Conv1D` "
        "weights only (no embeddings, biases, norms). Its FAISS path fails on CPU: `{err}` "
        "(faiss-cpu has no `GpuIndex`); the worker set `faiss.GpuIndex` to an empty class and "
        "ran bergson's FAISS query unchanged."
    ),
    "dattri": (
        "dattri 0.3.0's `LoGraAttributor` (its block-projected IF; empirical-Fisher "
        "preconditioner per layer, `damping={damping}`: relative, {damping} x each layer's "
        "mean eigenvalue, its `stable_inverse`; its default 1e-5 left the preconditioner "
        "nearly undamped) on its default layers, every "
        "`nn.Linear` (GPT-2's `Conv1D` replaced by `nn.Linear` first, as for Kronfluence); "
        "its `proj_dim` is per layer and a perfect square, so the width is the nearest below "
        "the others'."
    ),
    "kronfluence": (
        "Configured as its language-model example (examples/wikitext: GPT-2's `Conv1D` "
        "replaced by `nn.Linear` via `replace_conv1d_modules`; its DOCUMENTATION.md: only "
        "`nn.Linear`/`nn.Conv2d` are supported, so embeddings and norms are left out; the tied "
        "`lm_head` counts through its output use only), `FactorArguments(strategy='ekfac')` "
        "(its default strategy; sampled labels, the true Fisher), `ScoreArguments("
        "damping_factor=None)`: its heuristic, {damping} x each module's mean eigenvalue "
        '(arguments.py: "If `None`, uses a heuristic of 0.1 times the mean eigenvalue"; '
        "its default 1e-8 is absolute), all {q} queries in one query batch "
        "(`per_device_query_batch_size`, the largest there is; DOCUMENTATION.md)."
    ),
}


def bergson_coverage(data_path: Path, modules: list[str]) -> float:
    """Fraction of the trainable parameters in the weights of the modules bergson tracked."""
    from lm_common import load

    model, _ = load(data_path)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = model.base_model
    return sum(base.get_submodule(m).weight.numel() for m in modules) / total


def duplicate_ranks(scores: np.ndarray, positions: np.ndarray) -> list[int]:
    """Rank (1 = first) of each planted duplicate in its query's row, largest score first."""
    ranks = []
    for i, j in enumerate(positions):
        row = scores[i]
        ranks.append(int((row > row[j]).sum()) + 1)
    return ranks


def one_method(
    name: str,
    spec: tuple[Path, dict],
    a: argparse.Namespace,
    work: Path,
    data_path: Path,
    positions: np.ndarray,
    results: dict[str, Any],
    matrices: dict[str, np.ndarray],
) -> None:
    """Run one method's worker; keep its result, notes, duplicate ranks and matrix."""
    python, wargs = spec
    print(f"running {name} ...", flush=True)
    results[name], scores = run_worker(name, python, wargs, work, a.worker_timeout)
    print(f"  {name}: {json.dumps(results[name])[:300]}", flush=True)
    if scores is None:
        return
    if name == "bergson":
        results[name]["covered"] = bergson_coverage(data_path, results[name]["modules"])
        side, err = wargs["projection_dim"], results[name]["faiss_error"]
        results[name]["note"] = NOTES[name].format(side=side, err=err)
    if name in NOTES and name != "bergson":
        results[name]["note"] = NOTES[name].format(q=a.n_test, damping=a.damping)
    matrices[name] = scores
    results[name]["duplicate_ranks"] = duplicate_ranks(scores, positions)


def lds_gap(
    ours: np.ndarray, peer: np.ndarray, masks: np.ndarray, outputs: np.ndarray, n_boot: int = 200
) -> tuple[float, float]:
    """LDS of ``ours`` minus that of ``peer``, and its spread over the same resamples of the
    retrained models for both (paired: the subsets' own noise, common to both, cancels)."""
    gap = lds(ours, masks, outputs) - lds(peer, masks, outputs)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(masks), size=len(masks))
        per = lds_per_test(ours, masks[pick], outputs[pick])
        per_peer = lds_per_test(peer, masks[pick], outputs[pick])
        if np.isfinite(per).any() and np.isfinite(per_peer).any():  # else: one subset drawn
            boots.append(np.nanmean(per) - np.nanmean(per_peer))
    return float(gap), float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")


RESERVE_S = 240.0
"""Seconds kept at the end of a ``--time-limit``: a retraining started just before, the
coverage check and the record."""


def timed_rounds(
    names: list[str],
    table: dict[str, tuple[Path, dict]],
    a: argparse.Namespace,
    run_first: Any,
    results: dict[str, Any],
    end: float,
) -> int:
    """Run ``names`` ``a.repeats`` times, round-robin (so that a change of the machine's load
    falls on every method alike); the first round through ``run_first(name)`` (result,
    matrix, raw outputs), later ones for their times only, each only if it would end (by the
    last round's time) before ``end`` (``time.time()``) less :data:`RESERVE_S`. A method's
    ``times`` become the per-phase medians over its rounds, ``rounds`` keeps each round's
    times. Returns the rounds run."""
    rounds: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    starts: dict[str, list[float]] = {n: [] for n in names}  # time.time() of each timed run
    done, last = 0, 0.0
    for r in range(a.repeats):
        began = time.time()
        if r and began + last > end - RESERVE_S:
            print(f"round {r + 1} would end past the time limit: {r} round(s) run", flush=True)
            break
        for name in names:
            if r == 0:
                run_first(name)
                if "error" not in results[name]:
                    rounds[name].append(results[name]["times"])
                    starts[name].append(results[name]["started_at"])
                continue
            if "error" in results[name]:
                continue
            print(f"running {name} (round {r + 1} of {a.repeats}) ...", flush=True)
            python, wargs = table[name]
            again, _ = run_worker(name, python, wargs, WORK / "lm", a.worker_timeout, False)
            if "error" in again:
                results[name]["round_error"] = again["error"]
            else:
                rounds[name].append(again["times"])
                starts[name].append(again["started_at"])
        done, last = r + 1, time.time() - began
    for name, times in rounds.items():
        if times:
            phases = times[0].keys()
            results[name]["times"] = {p: float(np.median([t[p] for t in times])) for p in phases}
            results[name]["rounds"] = times
            results[name]["round_starts"] = starts[name]
    return done


def loss_spread(losses: np.ndarray) -> dict[str, float]:
    """How the retrained models' query losses ``(models, queries)`` vary: each query's spread
    over the models (median over queries), the spread of each model's mean over the queries
    (a shift common to all queries of a model, which no attribution of single train points
    predicts), and each query's spread once that shift is taken out."""
    if len(losses) < 2:
        return {}
    shifted = losses - losses.mean(1, keepdims=True)
    return {
        "per_query_std": float(np.median(losses.std(0))),
        "model_shift_std": float(losses.mean(1).std()),
        "per_query_std_shift_removed": float(np.median(shifted.std(0))),
    }


def start_helper(argv: list[str], work: Path) -> subprocess.Popen:
    """A ``--retrain-helper`` process with this run's arguments (its output to a log)."""
    log = (work / "retrain-helper.log").open("w")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--retrain-helper"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def stop_helper(helper: subprocess.Popen, work: Path, seconds: float) -> float:
    """Wait for the helper (it stops once every model is cached); kill it after ``seconds``
    (a retraining it had begun is lost). Returns when it ended (``time.time()``)."""
    try:
        helper.wait(timeout=max(0.0, seconds))
        return (work / "retrain-helper.log").stat().st_mtime  # its exit message
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
        return time.time()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    start, started, load_start = time.perf_counter(), time.time(), load_now()
    end = started + 60 * a.time_limit if a.time_limit > 0 else float("inf")
    torch.set_num_threads(a.threads)
    work = WORK / "lm"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(STAGE, ignore_errors=True)
    settings = vars(a) | {"n_train": a.n_train}
    data_path, facts = prepare(work, settings)
    print(f"model: {facts}", flush=True)
    if a.retrain_helper:
        until = min(time.time() + 60 * a.retrain_minutes, end - RESERVE_S)
        done = retrain(work, settings, data_path, until, True, a.retrain_from)
        print(f"{len(done['losses'])} retrained models in the cache", flush=True)
        return
    cached = len(retrain(work, settings, data_path, 0.0)["losses"])  # an earlier run's
    helper = start_helper(argv, work) if a.retrain_beside else None
    blob = torch.load(data_path, weights_only=True)
    positions = blob["dup_positions"].numpy()
    results: dict[str, Any] = {}
    matrices: dict[str, np.ndarray] = {}
    table = methods(a, data_path, work)
    late = set(a.after_retraining.split(","))
    names = a.methods.split(",")

    def run_first(name: str) -> None:
        one_method(name, table[name], a, work, data_path, positions, results, matrices)

    rounds_run = timed_rounds(
        [n for n in names if n not in late], table, a, run_first, results, end
    )
    deadline = min(time.time() + 60 * a.retrain_minutes, end - RESERVE_S)
    truth = retrain(work, settings, data_path, deadline)
    helper_minutes, by_main = None, truth["trained"]
    if helper is not None:
        wait = min(300.0, end - RESERVE_S / 2 - time.time())
        helper_minutes = (stop_helper(helper, work, wait) - started) / 60
        truth = retrain(work, settings, data_path, deadline)  # the models the helper finished
    n_models = len(truth["losses"])
    print(f"retrained {n_models} models", flush=True)
    if late & set(names):
        rounds_run = min(
            rounds_run,
            timed_rounds([n for n in names if n in late], table, a, run_first, results, end),
        )
    if n_models >= 3:
        shifted = truth["losses"] - truth["losses"].mean(1, keepdims=True)
        for name, scores in matrices.items():
            value, spread = lds_bootstrap(scores, truth["masks"], -truth["losses"])
            results[name]["lds"], results[name]["lds_std"] = value, spread
            value, spread = lds_bootstrap(scores, truth["masks"], -shifted)
            results[name]["lds_shift_removed"], results[name]["lds_shift_removed_std"] = (
                value,
                spread,
            )
    gap = None
    scored = [k for k in matrices if "lds" in results[k]]
    ours = [k for k in scored if k in ("ekfac", "projected")]
    peers = [k for k in scored if k not in ours and k != "projected_mmap32"]
    if ours and peers:
        best = max(ours, key=lambda k: results[k]["lds"])
        rival = max(peers, key=lambda k: results[k]["lds"])
        value, spread = lds_gap(matrices[best], matrices[rival], truth["masks"], -truth["losses"])
        gap = {"ours": best, "peer": rival, "gap": value, "gap_std": spread}
    data = {
        "settings": {k: v for k, v in vars(a).items() if k not in ("no_write", "results")},
        "model": facts,
        "tokens_per_sequence": int(blob["train"].shape[1]),
        "dup_positions": positions.tolist(),
        "rounds_run": rounds_run,
        "started_at": started,
        "methods": results,
        "retrained": {
            "models": n_models,
            "seconds_each": truth["seconds_each"],
            "helper_minutes": helper_minutes,
            "cached": cached,
            "by_helper": None if helper is None else n_models - by_main - cached,
            **loss_spread(truth["losses"]),
        },
        "lds_gap": gap,
        "coverage": coverage(),
    }
    info = machine_info(["torch", "transformers", "numpy"])
    save_result(
        "lm",
        SECTION,
        "lm/lm_report.py:render",
        data,
        a,
        script="lm/bench_lm.py",
        argv=argv,
        wall_s=time.perf_counter() - start,
        machine=info,
        load_start=load_start,
    )
    if not a.no_write:
        publish_raw()
    shutil.rmtree(work / "ekfac-store", ignore_errors=True)


if __name__ == "__main__":
    main()
