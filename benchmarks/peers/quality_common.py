"""What the peer scripts of the attribution-quality benchmark share (torch and numpy only).

A peer script runs inside its peer's virtual environment as

    python benchmarks/peers/quality_<peer>.py --case-dir DIR --settings JSON --methods A,B --out DIR

It loads the case written by ``benchmarks/quality/quality_cases.py`` (``meta.json``, ``data.npz``,
``model_clean.pt``, ``model_noisy.pt``: the same trained models, data and flipped labels as
infl_array's run), computes for each requested method the ``(n_test, n_train)`` scores on the
clean model and the self-influence of every train point on the noisy model, and writes
``<out>/<peer> <method>.npz`` with ``scores``, ``self_influence`` (float64, positive = helpful,
as infl_array), ``fit_seconds``, ``matrix_seconds``, ``self_seconds``; or
``<out>/<peer> <method>.json`` with ``{"skipped": reason}`` when the method cannot run on the
case (the main script prints the reason).

A method is ``compute(model, train, test, settings) -> (scores, fit_seconds, matrix_seconds)``
and ``self_compute(model, train, detect, settings) -> (self_influence, seconds)``: ``train``
and ``test`` are ``(x, y)`` tensors, ``detect`` the indices of the train points whose
self-influence (against the model fitted on all of ``train``) is wanted. Models and inputs
are cast to ``settings["dtype"]`` ("float64" or "float32") before the method sees them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))
import quality_models as qm

Data = tuple[torch.Tensor, torch.Tensor]
Method = tuple[
    Callable[[torch.nn.Module, Data, Data, dict[str, Any]], tuple[np.ndarray, float, float]],
    Callable[[torch.nn.Module, Data, np.ndarray, dict[str, Any]], tuple[np.ndarray, float]],
]


class Skip(Exception):
    """A method that cannot run on this case (the message says why)."""


def parse_args(peer: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"{peer} methods on one quality case")
    parser.add_argument("--case-dir", type=Path, required=True)
    parser.add_argument("--settings", required=True, help="JSON: regularization, rank, ...")
    parser.add_argument("--methods", required=True, help="comma-separated method labels")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), wall seconds)``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def main(peer: str, methods: dict[str, Method]) -> None:
    """Run the requested methods of ``peer`` on one case and write their results."""
    args = parse_args(peer)
    torch.set_num_threads(args.threads)
    settings = json.loads(args.settings)
    meta, t = qm.load_case(args.case_dir)
    kind = meta["case"]["kind"]
    dtype = getattr(torch, settings["dtype"])
    x_train, x_test = t["x_train"].to(dtype), t["x_test"].to(dtype)
    train, noisy, test = (
        (x_train, t["y_train"]),
        (x_train, t["y_train_noisy"]),
        (x_test, t["y_test"]),
    )
    detect = t["detect_indices"].numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    for label in args.methods.split(","):
        stem = args.out / f"{peer} {label}"
        if label not in methods:
            raise SystemExit(f"{peer}: unknown method {label!r}; known: {sorted(methods)}")
        compute, self_compute = methods[label]
        try:
            clean_model = qm.load_model(args.case_dir, kind, "clean").to(dtype)
            scores, fit_s, matrix_s = compute(clean_model, train, test, settings)
            noisy_model = qm.load_model(args.case_dir, kind, "noisy").to(dtype)
            self_influence, self_s = self_compute(noisy_model, noisy, detect, settings)
        except Skip as exc:
            stem.with_suffix(".json").write_text(json.dumps({"skipped": str(exc)}))
            print(f"{peer} {label}: skipped: {exc}", flush=True)
            continue
        except Exception as exc:  # report, keep going with the other methods
            traceback.print_exc()
            reason = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            stem.with_suffix(".json").write_text(json.dumps({"skipped": reason}))
            print(f"{peer} {label}: {reason}", flush=True)
            continue
        np.savez(
            stem.with_suffix(".npz"),
            scores=as_numpy(scores),
            self_influence=as_numpy(self_influence),
            fit_seconds=fit_s,
            matrix_seconds=matrix_s,
            self_seconds=self_s,
        )
        print(
            f"{peer} {label}: fit {fit_s:.2f} s, matrix {matrix_s:.2f} s, self {self_s:.2f} s",
            flush=True,
        )
