"""Cases of the attribution-quality benchmark: data, trained models, subsets and retraining.

For each case (:data:`CASES`) :func:`prepare` builds, once, and caches under
``benchmarks/_work/quality/<case>-<key>/`` (``key`` hashes every setting that changes results):

* the data: scikit-learn's digits (1,797 8x8 images) scaled to [0, 1], shuffled with a fixed
  seed, ``n_train`` train and ``n_test`` test points; a noisy copy of the train labels with
  ``FLIP_FRACTION`` of them flipped to another class (seeded);
* two trained models (:mod:`quality_models`): ``clean`` on the true labels, used for LDS and
  leave-one-out; ``noisy`` on the flipped labels, used only for mislabelled-point detection
  (self-influence). So LDS measures attribution on the model as trained, and detection
  measures what self-influence finds in a model that learned from the noise. Detection scores
  every flipped point and a seeded sample of ``N_DETECT_CLEAN`` clean ones
  (``detect_indices``): the AUC on them is an unbiased estimate of the AUC on all points (its
  standard error is set mostly by the number of flipped points), at a third of the cost of
  the self-influence of every point, which dominates for the iterative solvers;
* ``N_SUBSETS_MAX`` subsets of the clean train set, each keeping every point independently with
  probability ``ALPHA`` (subset ``s`` from ``numpy.random.default_rng([SUBSET_SEED, s])``, so a
  quick run's subsets are the first ones of a full run), and the outputs on the test points of
  a model retrained from the SAME initialisation on each (deterministic L-BFGS: no training
  noise beyond what the data changes);
* ``N_LOO`` train points (seeded) and, for each, the test outputs of the clean model retrained
  without it, warm-started from the clean model's parameters (Koh and Liang 2017: a single
  removal moves the optimum little, and a warm start keeps it in the same basin).

Every retraining result is one small ``.npy`` file, written atomically: an interrupted run keeps
what it finished, and reruns (e.g. when a new backend lands) never retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import quality_models as qm
import torch

WORK = Path(__file__).resolve().parents[1] / "_work" / "quality"
ALPHA = 0.5
FLIP_FRACTION = 0.10
N_SUBSETS_MAX = 100
N_LOO = 40
N_DETECT_CLEAN = 140
"""Clean points scored for detection, with every flipped one (see :func:`digits_split`)."""
DATA_SEED, SUBSET_SEED, LOO_SEED = 0, 1, 2


@dataclass(frozen=True)
class Case:
    """One benchmark case: model kind, size and training settings.

    ``weight_decay`` is the L2 penalty of training: the Hessian of the training objective is
    ``H + weight_decay * Id``. ``regularization`` is the damping every influence method gets
    (ours and the peers'): ``weight_decay`` itself for the convex case (exact); for the
    networks, whose ``H`` has eigenvalues down to about ``-weight_decay`` at the trained
    parameters (so ``H + weight_decay * Id`` is singular to rounding), a damping that gives
    ``H + regularization * Id`` a condition number of about 100 (see the Hessian spectra in
    the results), which keeps the iterative solvers within the time budget.
    Models are trained and retrained in float64; influence is computed in ``dtype`` (the
    trained float64 parameters cast), float32 for the CNN, whose Hessian-vector products cost
    4x more in float64.
    """

    name: str
    kind: str
    n_train: int
    n_test: int
    weight_decay: float
    grad_tol: float
    regularization: float
    dtype: str = "float64"

    def key(self) -> str:
        """Hash of every setting that changes the cached data, models and retraining."""
        settings = {
            **{k: v for k, v in asdict(self).items() if k not in ("regularization", "dtype")},
            "alpha": ALPHA,
            "flip": FLIP_FRACTION,
            "seeds": [DATA_SEED, SUBSET_SEED, LOO_SEED],
            "n_loo": N_LOO,
            "version": 2,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    def folder(self) -> Path:
        return WORK / f"{self.name}-{self.key()}"


CASES = {
    "logreg": Case("logreg", "logreg", 600, 100, 1e-3, 1e-6, regularization=1e-3),
    "mlp": Case("mlp", "mlp", 600, 100, 1e-3, 1e-5, regularization=1e-2),
    "cnn": Case("cnn", "cnn", 600, 100, 3e-3, 1e-5, regularization=1e-1, dtype="float32"),
}


def digits_split(case: Case) -> dict[str, np.ndarray]:
    """Shuffled, scaled digits split into train/test, with the noisy train labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(DATA_SEED)
    order = rng.permutation(len(y))
    x, y = x[order] / 16.0, y[order].astype(np.int64)
    n_tr, n_te = case.n_train, case.n_test
    if n_tr + n_te > len(y):
        raise ValueError(f"case {case.name}: n_train + n_test exceeds the {len(y)} digits.")
    y_train = y[:n_tr]
    flipped = np.zeros(n_tr, dtype=bool)
    flipped[rng.choice(n_tr, size=round(FLIP_FRACTION * n_tr), replace=False)] = True
    noisy = y_train.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, size=int(flipped.sum()))) % 10
    return {
        "x_train": x[:n_tr],
        "y_train": y_train,
        "y_train_noisy": noisy,
        "flipped": flipped,
        "x_test": x[n_tr : n_tr + n_te],
        "y_test": y[n_tr : n_tr + n_te],
        "subsets": np.stack(
            [
                np.random.default_rng([SUBSET_SEED, s]).random(n_tr) < ALPHA
                for s in range(N_SUBSETS_MAX)
            ]
        ),
        "loo_indices": np.sort(np.random.default_rng(LOO_SEED).choice(n_tr, N_LOO, replace=False)),
        "detect_indices": np.sort(
            np.concatenate(
                [
                    np.flatnonzero(flipped),
                    rng.choice(np.flatnonzero(~flipped), N_DETECT_CLEAN, replace=False),
                ]
            )
        ),
    }


def _save_atomic(path: Path, value: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, value)
    os.replace(tmp, path)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _train_fresh(case: Case, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    model = qm.make_model(case.kind)
    qm.train(model, x, y, case.weight_decay, case.grad_tol)
    return model.eval()


def _spectrum(case: Case, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Smallest and largest eigenvalue of the Hessian of the mean train loss (no penalty)."""
    from infl_array.torch import CgInfluence  # its fit computes nothing; hessian() is explicit

    h = CgInfluence(model, torch.nn.functional.cross_entropy).fit((x, y)).hessian()
    ev = torch.linalg.eigvalsh(h)
    return [float(ev[0]), float(ev[-1])]


def prepare_models(case: Case) -> dict[str, Any]:
    """Data and the two trained models of ``case`` (cached); returns the case's meta data."""
    folder = case.folder()
    if (folder / "meta.json").exists() and (folder / "model_noisy.pt").exists():
        return json.loads((folder / "meta.json").read_text())
    arrays = digits_split(case)
    t = _tensors(arrays)
    meta: dict[str, Any] = {"case": asdict(case), "key": case.key(), "alpha": ALPHA}
    for which, labels in (("clean", "y_train"), ("noisy", "y_train_noisy")):
        start = time.perf_counter()
        model = _train_fresh(case, t["x_train"], t[labels])
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / f"model_{which}.pt")
        meta[which] = {
            "train_seconds": time.perf_counter() - start,
            "train_accuracy": qm.accuracy(model, t["x_train"], t[labels]),
            "test_accuracy": qm.accuracy(model, t["x_test"], t["y_test"]),
            "hessian_eig_min_max": _spectrum(case, model, t["x_train"], t[labels]),
        }
    meta["n_params"] = qm.n_params(model)
    qm.save_case(folder, meta, arrays)
    return meta


def retrain_outputs(case: Case, n_subsets: int, log: Any = print) -> dict[str, np.ndarray]:
    """Subset masks, retrained outputs, LOO indices and deltas (retraining what is missing).

    Returns
    -------
    dict
        ``subsets`` ``(n_subsets, n_train)`` bool, ``outputs`` ``(n_subsets, n_test)``,
        ``loo_indices`` ``(N_LOO,)``, ``loo_deltas`` ``(n_test, N_LOO)`` (output without the
        point minus output of the clean model), ``full_outputs`` ``(n_test,)``, ``flipped``
        ``(n_train,)`` bool, ``detect_indices`` (the train points scored for detection).
    """
    folder = case.folder()
    meta, t = qm.load_case(folder)
    del meta
    x_tr, y_tr, x_te, y_te = t["x_train"], t["y_train"], t["x_test"], t["y_test"]
    clean = qm.load_model(folder, case.kind, "clean")
    full = qm.outputs(clean, x_te, y_te)
    masks = t["subsets"].numpy()[:n_subsets]
    loo_dir = folder / f"loo-tol{case.grad_tol:g}"
    (folder / "retrain").mkdir(exist_ok=True)
    loo_dir.mkdir(exist_ok=True)
    todo = [s for s in range(n_subsets) if not (folder / "retrain" / f"subset_{s}.npy").exists()]
    start = time.perf_counter()
    for k, s in enumerate(todo):
        keep = torch.from_numpy(masks[s])
        model = _train_fresh(case, x_tr[keep], y_tr[keep])
        _save_atomic(folder / "retrain" / f"subset_{s}.npy", qm.outputs(model, x_te, y_te))
        if (k + 1) % 10 == 0 or k + 1 == len(todo):
            log(
                f"  {case.name}: retrained {k + 1}/{len(todo)} subsets "
                f"({time.perf_counter() - start:.0f} s)"
            )
    loo_idx = t["loo_indices"].numpy()
    state = clean.state_dict()
    for k, j in enumerate(loo_idx):
        path = loo_dir / f"loo_{j}.npy"
        if path.exists():
            continue
        keep = torch.from_numpy(np.arange(case.n_train) != j)
        model = qm.make_model(case.kind)
        model.load_state_dict(state)
        qm.train(model, x_tr[keep], y_tr[keep], case.weight_decay, case.grad_tol)
        _save_atomic(path, qm.outputs(model.eval(), x_te, y_te))
        if (k + 1) % 10 == 0:
            log(f"  {case.name}: leave-one-out {k + 1}/{len(loo_idx)}")
    outputs = np.stack([np.load(folder / "retrain" / f"subset_{s}.npy") for s in range(n_subsets)])
    loo = np.stack([np.load(loo_dir / f"loo_{j}.npy") for j in loo_idx], axis=1)
    return {
        "subsets": masks,
        "outputs": outputs,
        "loo_indices": loo_idx,
        "loo_deltas": loo - full[:, None],
        "full_outputs": full,
        "flipped": t["flipped"].numpy(),
        "detect_indices": t["detect_indices"].numpy(),
    }
