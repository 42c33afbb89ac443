"""The seeded problems of ``bench_speed.py`` and what every speed worker needs to run them.

A problem is a synthetic 3-class data set and an MLP trained on it with Adam, all seeded, so
that every process (ours in the project's environment, pyDVL's in ``.venv-pydvl``) builds the
same model and data; :func:`model_sha` checks it. torch and numpy are imported where used:
this module loads in both environments.
"""

from __future__ import annotations

import contextlib
import cProfile
import hashlib
import io
import pstats
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import Timer

THREADS = 2
CG_TOL = {"rtol": 1e-4, "atol": 1e-6, "maxiter": None}
"""CG's tolerances on both sides: the documented defaults of ``CgInfluence``, pyDVL 0.10's and
ours (pyDVL's ``CgOperator`` defaults to ``rtol=atol=1e-7``; ``CgInfluence`` does not use them)."""
SMALL_BLOCK = (50, 50)


def setup_torch() -> Any:
    """torch with ``THREADS`` threads and its deprecation noise silenced."""
    import torch

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return torch


def make_problem(
    d_in: int, hidden: int, n_train: int, n_test: int, seed: int, steps: int, batch: int
) -> dict[str, Any]:
    """Seeded synthetic 3-class problem and an MLP ``d_in -> hidden -> 3`` trained with Adam."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, 3, generator=g)
    x = torch.randn(n_train + n_test, d_in, generator=g)
    y = (x @ w / d_in**0.5 + 0.5 * torch.randn(n_train + n_test, 3, generator=g)).argmax(1)
    x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ce = torch.nn.functional.cross_entropy
    for _ in range(steps):
        idx = torch.randint(0, n_train, (min(batch, n_train),), generator=g)
        opt.zero_grad()
        ce(model(x_tr[idx]), y_tr[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc_tr = float((model(x_tr).argmax(1) == y_tr).float().mean())
        acc_te = float((model(x_te).argmax(1) == y_te).float().mean())
    return {
        "model": model,
        "train": (x_tr, y_tr),
        "test": (x_te, y_te),
        "n_params": sum(p.numel() for p in model.parameters()),
        "acc": (acc_tr, acc_te),
    }


def problem_for(case: str, quick: bool) -> dict[str, Any]:
    """The seeded model and data of case ``small`` or ``medium`` (identical in every process)."""
    if case == "small":
        n_train, n_test = (400, 200) if not quick else (200, 100)
        prob = make_problem(20, 32, n_train, n_test, seed=1, steps=300, batch=100)
        prob["batch"] = 50
    else:
        n_train, n_test = (10_000, 2_000) if not quick else (2_000, 400)
        prob = make_problem(20, 64, n_train, n_test, seed=2, steps=600, batch=100)
        prob["batch"] = 100
    prob["n_train"], prob["n_test"] = n_train, n_test
    return prob


def case_problem(case: str, quick: bool) -> dict[str, Any]:
    """:func:`problem_for` after :func:`setup_torch`, with the loss (``loss``, cross-entropy)
    and loaders of batch ``prob["batch"]`` (``train_loader``, ``test_loader``)."""
    torch = setup_torch()
    from torch.utils.data import DataLoader, TensorDataset

    prob = problem_for(case, quick)
    prob["loss"] = torch.nn.functional.cross_entropy
    prob["train_loader"] = DataLoader(TensorDataset(*prob["train"]), batch_size=prob["batch"])
    prob["test_loader"] = DataLoader(TensorDataset(*prob["test"]), batch_size=prob["batch"])
    return prob


def medium_blocks(n_test: int, n_train: int) -> list[tuple[int, int]]:
    return [(100, 100), (256, 4096), (1000, 5000), (n_test, n_train)]


def model_sha(model: Any) -> str:
    """A short hash of the parameters (both sides must train the same model)."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()[:16]


def rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / max |b|, in float64."""
    import numpy as np

    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a64 - b64).max() / np.abs(b64).max())


@contextlib.contextmanager
def caught_warnings() -> Iterator[list[str]]:
    """Collect the distinct warnings of the block (deprecations ignored) as short strings."""
    msgs: list[str] = []
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield msgs
    msgs.extend(sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in ws}))


def ours_fill(
    model: Any, train: Any, test: Any, block: tuple[int, int], path: Path
) -> tuple[float, Any]:
    """``create`` + ``fill()`` of a fresh store; returns (seconds, the array)."""
    import infl_array as ia

    shutil.rmtree(path, ignore_errors=True)
    t = Timer()
    arr = ia.InfluenceArray.create(str(path), model, test=test, train=train, block_shape=block)
    arr.fill(progress=False)
    return t.lap(), arr


def factor_pieces(infl: Any, train: Any, test: Any) -> dict[str, float]:
    """The pieces of the floor with our backend: all test factors in one call, all train
    factors in one call, one float32 product, one float64 product (seconds)."""
    t = Timer()
    tf = infl.test_factors(*test)
    out = {"piece_test_factors": t.lap()}
    trf = infl.train_factors(*train)
    out["piece_train_factors"] = t.lap()
    _ = tf @ trf.T
    out["piece_product_f32"] = t.lap()
    _ = tf.double() @ trf.double().T
    out["piece_product_f64"] = t.lap()
    return out


def profile_text(fn: Callable[[], Any], top: int = 18) -> str:
    """cProfile of one call of ``fn``: the ``top`` functions by own time."""
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()
