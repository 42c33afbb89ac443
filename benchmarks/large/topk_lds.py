"""LDS with lossless and with ``keepbits`` factors (issue 23), on the attribution-quality case.

Reuses ``benchmarks/quality`` (owned by the quality suite; called, not edited): its MLP case
on scikit-learn's digits, its trained model and its retrained ``alpha = 0.5`` subsets
(``quality_cases.prepare_models``, and the subsets ``retrain_outputs`` trains, in its cache
under ``benchmarks/_work/quality/``: the subsets are retrained here the same way, without its
leave-one-out retraining, which LDS does not use), and its settings for
``ProjectedInfluence`` (``quality.settings_for``). The full matrix is read twice, from a store
with lossless factors and from one with ``factor_compression=ia.Compression(keepbits=...)``,
and both are scored by ``infl_array.quality.lds_bootstrap`` as ``quality.py`` scores them.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import infl_array as ia

QUALITY = Path(__file__).resolve().parents[1] / "quality"


def lds_with_keepbits(
    keepbits: int, n_subsets: int = 100, case_name: str = "mlp"
) -> dict[str, Any]:
    """LDS (and its bootstrap spread) of ``ProjectedInfluence`` with lossless and lossy factors."""
    sys.path[:0] = [str(QUALITY)]
    import quality  # benchmarks/quality, through sys.path
    import quality_cases as qc
    import quality_models as qm

    from infl_array.quality import lds_bootstrap
    from infl_array.torch import ProjectedInfluence

    start = time.perf_counter()
    case = qc.CASES[case_name]
    meta = qc.prepare_models(case)
    _, t = qm.load_case(case.folder())
    subsets, outputs = retrained_subsets(case, t, n_subsets, qc, qm)
    prepare_s = time.perf_counter() - start
    settings = quality.settings_for(case, meta)
    model = qm.load_model(case.folder(), case.kind, "clean")
    train, test = (t["x_train"], t["y_train"]), (t["x_test"], t["y_test"])
    infl = ProjectedInfluence(
        model,
        F.cross_entropy,
        regularization=settings["regularization"],
        projection_dim=settings["projection_dim"],
    ).fit(train)
    out: dict[str, Any] = {
        "case": case_name,
        "n_train": case.n_train,
        "n_test": case.n_test,
        "n_subsets": n_subsets,
        "projection_dim": settings["projection_dim"],
        "regularization": settings["regularization"],
        "keepbits": keepbits,
        "prepare_s": prepare_s,
    }
    with tempfile.TemporaryDirectory() as tmp:
        lossy = ia.Compression(keepbits=keepbits)
        for name, compression in (("lossless", None), ("keepbits", lossy)):
            arr = ia.InfluenceArray.create(
                Path(tmp) / name,
                infl,
                test=test,
                train=train,
                block_shape=(case.n_test, case.n_train),
                dtype=case.dtype,
                factor_compression=compression,
            )
            scores = np.asarray(arr[:, :])
            value, spread = lds_bootstrap(scores, subsets, outputs, n_boot=200, seed=0)
            out[f"lds_{name}"], out[f"lds_spread_{name}"] = value, spread
            out[f"scores_{name}"] = scores
    lossless, lossy = out.pop("scores_lossless"), out.pop("scores_keepbits")
    out["max_relative_change"] = float(np.abs(lossy - lossless).max() / np.abs(lossless).max())
    out["lds_change"] = out["lds_keepbits"] - out["lds_lossless"]
    return out


def retrained_subsets(case: Any, t: Any, n_subsets: int, qc: Any, qm: Any) -> tuple[Any, Any]:
    """The first ``n_subsets`` subset masks and the test outputs of the models retrained on
    them, from the quality suite's cache (``retrain/subset_<s>.npy``), training the missing
    ones as ``quality_cases.retrain_outputs`` does."""
    folder = case.folder()
    (folder / "retrain").mkdir(exist_ok=True)
    masks = t["subsets"].numpy()[:n_subsets]
    x_tr, y_tr, x_te, y_te = t["x_train"], t["y_train"], t["x_test"], t["y_test"]
    for s in range(n_subsets):
        path = folder / "retrain" / f"subset_{s}.npy"
        if not path.exists():
            keep = torch.from_numpy(masks[s])
            model = qc._train_fresh(case, x_tr[keep], y_tr[keep])
            qc._save_atomic(path, qm.outputs(model, x_te, y_te))
            print(f"  retrained subset {s + 1}/{n_subsets}", flush=True)
    outputs = np.stack([np.load(folder / "retrain" / f"subset_{s}.npy") for s in range(n_subsets)])
    return masks, outputs
