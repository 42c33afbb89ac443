"""Torch backends against an exact reference built here, independently of the library.

The reference (``tests/exact_reference.py``): the explicit Hessian of the mean training loss
(``torch.func.hessian`` over the flattened parameters), ``(H + lambda*Id)`` solved densely,
per-sample gradients by plain autograd one sample at a time. All in float64.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exact_reference import grads, hessian
from models import adam_fit, tanh_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infl_array.torch import (
    ArnoldiInfluence,
    CgInfluence,
    ConvergenceWarning,
    DirectInfluence,
    LissaInfluence,
)

N_TRAIN, N_TEST = 60, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def _reference(model: nn.Module, loss, x, y, x_test, y_test, lam: float):
    """Exact influence matrix, Hessian and gradients, built without the library."""
    h = hessian(model, loss, x, y)
    g_train, g_test = grads(model, loss, x, y), grads(model, loss, x_test, y_test)
    a = h + lam * torch.eye(h.shape[0], dtype=h.dtype)
    infl = g_test @ torch.linalg.solve(a, g_train.T)
    return {"H": h, "g_train": g_train, "g_test": g_test, "I": infl, "A": a}


@pytest.fixture(scope="module")
def mlp():
    """A 4 -> 5 -> 3 tanh MLP (43 params) trained a bit with cross-entropy, and its reference."""
    model = tanh_mlp(4, 5, 3, seed=0)
    gen = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_TEST
    x_all = torch.randn(n, 4, dtype=torch.float64, generator=gen)
    w = 2 * torch.randn(4, 3, dtype=torch.float64, generator=gen)
    noise = torch.randn(n, 3, dtype=torch.float64, generator=gen)
    y_all = torch.argmax(x_all @ w + noise, dim=1)
    x, y = x_all[:N_TRAIN], y_all[:N_TRAIN]
    x_test, y_test = x_all[N_TRAIN:], y_all[N_TRAIN:]
    adam_fit(model, x, y, lr=0.02, steps=300)
    lam = 0.01
    ref = _reference(model, F.cross_entropy, x, y, x_test, y_test, lam)
    eig = torch.linalg.eigvalsh(ref["H"])
    # lambda must not dominate H, and H + lambda*Id must be positive definite (for CG/LiSSA)
    assert float(eig[-1]) >= 20 * lam
    assert float(eig[0]) + lam > 0
    return {"model": model, "x": x, "y": y, "xt": x_test, "yt": y_test, "lam": lam, **ref}


def _infl(backend, p) -> torch.Tensor:
    return backend.influences(p["xt"], p["yt"], p["x"], p["y"])


def test_direct_matches_exact(mlp):
    inf = DirectInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"]).fit(
        (mlp["x"], mlp["y"])
    )
    assert inf.hessian_ is not None
    assert _max_rel_err(inf.hessian_, mlp["H"]) < 1e-10
    assert _max_rel_err(inf.train_factors(mlp["x"], mlp["y"]), mlp["g_train"]) < 1e-10
    assert _max_rel_err(_infl(inf, mlp), mlp["I"]) < 1e-6
    tf = inf.test_factors(mlp["xt"], mlp["yt"])
    assert tf.shape == (N_TEST, 43) and tf.dtype == torch.float64


def test_cg_matches_exact(mlp):
    # defaults rtol=1e-4, atol=1e-6 in pyDVL's meaning: ||r|| < max(1e-8 ||g||, 1e-12)
    inf = CgInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"])
    inf.fit((mlp["x"], mlp["y"]))
    assert _max_rel_err(_infl(inf, mlp), mlp["I"]) < 1e-6


def test_cg_scipy_tolerance_matches_exact(mlp):
    inf = CgInfluence(
        mlp["model"], F.cross_entropy, regularization=mlp["lam"], rtol=1e-8, tol_mode="scipy"
    )
    inf.fit((mlp["x"], mlp["y"]))
    assert _max_rel_err(_infl(inf, mlp), mlp["I"]) < 1e-6


def test_cg_one_data_pass_per_iteration_for_all_columns(mlp, monkeypatch):
    """Block CG: each iteration computes H @ P for all active columns in one call."""
    inf = CgInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"])
    inf.fit((mlp["x"], mlp["y"]))
    widths: list[int] = []
    original = inf.curvature_matmat

    def counting(v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
        widths.append(v.shape[1])
        return original(v, col_block)

    monkeypatch.setattr(inf, "curvature_matmat", counting)
    inf.test_factors(mlp["xt"], mlp["yt"])
    assert len(widths) == inf.n_iter_
    assert widths[0] == N_TEST  # all right-hand sides in the first product
    assert inf.n_iter_ < 10 * 43


def test_arnoldi_full_rank_matches_exact(mlp):
    inf = ArnoldiInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"], rank=43)
    inf.fit((mlp["x"], mlp["y"]))
    assert inf.train_factors(mlp["x"], mlp["y"]).shape == (N_TRAIN, 43)
    assert _max_rel_err(_infl(inf, mlp), mlp["I"]) < 1e-5


def test_arnoldi_low_rank_matches_truncated_eigendecomposition(mlp):
    """rank < n_params - 1 goes through Lanczos; compare with the exact top-r truncation."""
    rank, lam = 8, mlp["lam"]
    inf = ArnoldiInfluence(mlp["model"], F.cross_entropy, regularization=lam, rank=rank, tol=0)
    inf.fit((mlp["x"], mlp["y"]))
    evals, evecs = torch.linalg.eigh(mlp["H"])
    top = torch.argsort(evals.abs(), descending=True)[:rank]
    v, mu = evecs[:, top], evals[top]
    expected = (mlp["g_test"] @ v / (mu + lam)) @ (mlp["g_train"] @ v).T
    assert inf.eigenvalues_ is not None
    assert torch.allclose(inf.eigenvalues_.sort().values, mu.sort().values, rtol=1e-8)
    assert _max_rel_err(_infl(inf, mlp), expected) < 1e-6
    assert inf.test_factors(mlp["xt"], mlp["yt"]).shape == (N_TEST, rank)


def test_lissa_correlates_with_exact(mlp):
    lmax = float(torch.linalg.eigvalsh(mlp["A"])[-1])
    inf = LissaInfluence(
        mlp["model"],
        F.cross_entropy,
        regularization=mlp["lam"],
        scale=1.2 * lmax,
        maxiter=2000,
        rtol=1e-5,
    )
    inf.fit((mlp["x"], mlp["y"]))
    infl = _infl(inf, mlp)
    assert _pearson(infl, mlp["I"]) >= 0.99
    assert _max_rel_err(infl, mlp["I"]) < 1e-2
    assert inf.n_iter_ is not None and inf.n_iter_ < 2000  # stopped on rtol, no warning


def test_lissa_warns_at_maxiter(mlp):
    inf = LissaInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"], maxiter=3)
    inf.fit((mlp["x"], mlp["y"]))
    with pytest.warns(ConvergenceWarning, match="maxiter=3"):
        inf.test_factors(mlp["xt"], mlp["yt"])


# ---------------------------------------------------------------- linear regression, closed form


@pytest.fixture(scope="module")
def linreg():
    gen = torch.Generator().manual_seed(1)
    n, d = 50, 3
    x = torch.randn(n, d, dtype=torch.float64, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3 * torch.randn(
        n, 1, dtype=torch.float64, generator=gen
    )
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.9, -1.8, 0.4]], dtype=torch.float64))
        model.bias.fill_(0.1)
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # params: weight, bias
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    resid = (xa @ theta - y[:, 0]).unsqueeze(1)
    grads = 2 * resid * xa  # d/dtheta (x^T theta - y)^2
    h = 2 * xa.T @ xa / n
    lam = 0.05
    a = h + lam * torch.eye(d + 1, dtype=torch.float64)
    infl = grads[:10] @ torch.linalg.solve(a, grads.T)
    return {"model": model, "x": x, "y": y, "H": h, "I": infl, "grads": grads, "lam": lam}


@pytest.mark.parametrize(
    ("cls", "kwargs", "tol"),
    [
        (DirectInfluence, {}, 1e-10),
        (CgInfluence, {"rtol": 1e-6, "atol": 0.0}, 1e-6),
        (ArnoldiInfluence, {"rank": 4}, 1e-8),
    ],
)
def test_linear_regression_closed_form(linreg, cls, kwargs, tol):
    p = linreg
    inf = cls(p["model"], F.mse_loss, regularization=p["lam"], **kwargs).fit((p["x"], p["y"]))
    assert _max_rel_err(inf.hessian(), p["H"]) < 1e-12
    infl = inf.influences(p["x"][:10], p["y"][:10], p["x"], p["y"])
    assert _max_rel_err(infl, p["I"]) < tol


# ---------------------------------------------------------------- Hessian of the mean over data


@pytest.mark.parametrize("cls", [DirectInfluence, CgInfluence, ArnoldiInfluence])
def test_ragged_batches_equal_one_batch(mlp, cls):
    """H is the Hessian of the mean over all points, not a mean of ragged batch Hessians."""
    kwargs: dict[str, Any] = {"rank": 43} if cls is ArnoldiInfluence else {}
    if cls is CgInfluence:
        kwargs = {"rtol": 1e-6, "atol": 0.0}
    ds = TensorDataset(mlp["x"], mlp["y"])
    one = cls(mlp["model"], F.cross_entropy, mlp["lam"], **kwargs).fit((mlp["x"], mlp["y"]))
    ragged = cls(mlp["model"], F.cross_entropy, mlp["lam"], batch_size=7, **kwargs).fit(
        DataLoader(ds, batch_size=7)  # 60 = 8 * 7 + 4
    )
    assert ragged.pass_size == 7
    # without an explicit batch_size, passes are not cut at a small loader batch size
    default = cls(mlp["model"], F.cross_entropy, mlp["lam"], **kwargs).fit(
        DataLoader(ds, batch_size=7)
    )
    assert default.pass_size == 1024
    assert _max_rel_err(ragged.hessian(), one.hessian()) < 1e-12
    assert _max_rel_err(_infl(ragged, mlp), _infl(one, mlp)) < 1e-8


def test_gradient_passes_fill_their_byte_bound_unless_batch_size_is_given(mlp):
    from infl_array.torch.full.gradients import GRADIENT_PASS_BYTES

    ds = TensorDataset(mlp["x"], mlp["y"])
    default = DirectInfluence(mlp["model"], F.cross_entropy, mlp["lam"]).fit(DataLoader(ds))
    row = default.n_params * mlp["x"].element_size()  # 43 float64 parameters
    assert default.pass_size == 1024 and default.gradient_pass_size == GRADIENT_PASS_BYTES // row
    given = DirectInfluence(mlp["model"], F.cross_entropy, mlp["lam"], batch_size=7).fit(ds[:])
    assert given.gradient_pass_size == 7  # an explicit batch_size is kept
    x = mlp["x"].repeat(3, 1)
    y = mlp["y"].repeat(3)
    torch.testing.assert_close(
        default.per_sample_grads(x, y), given.per_sample_grads(x, y), rtol=1e-12, atol=1e-14
    )


def test_mean_of_batch_hessians_would_differ(mlp):
    """Guard that the ragged test above is sensitive: an unweighted batch mean is different."""
    hs = [
        DirectInfluence(mlp["model"], F.cross_entropy)
        .fit((mlp["x"][s : s + 7], mlp["y"][s : s + 7]))
        .hessian()
        for s in range(0, 60, 7)
    ]
    assert _max_rel_err(torch.stack(hs).mean(0), mlp["H"]) > 1e-3


# ---------------------------------------------------------------- errors and warnings


def test_cg_warns_at_maxiter(mlp):
    inf = CgInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"], maxiter=2)
    inf.fit((mlp["x"], mlp["y"]))
    with pytest.warns(ConvergenceWarning, match=r"maxiter=2.*rtol=0.0001.*residual") as rec:
        inf.test_factors(mlp["xt"], mlp["yt"])
    assert issubclass(rec[0].category, UserWarning)
    assert "Increase maxiter" in str(rec[0].message)


def test_cg_no_warning_when_converged(mlp):
    inf = CgInfluence(mlp["model"], F.cross_entropy, regularization=mlp["lam"])
    inf.fit((mlp["x"], mlp["y"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inf.test_factors(mlp["xt"], mlp["yt"])


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (DirectInfluence, {"regularization": -1.0}, "regularization must be >= 0"),
        (DirectInfluence, {"regularization": float("nan")}, "finite number"),
        (CgInfluence, {"rtol": -1.0}, "rtol must be >= 0"),
        (CgInfluence, {"maxiter": 0}, "maxiter must be a positive integer"),
        (CgInfluence, {"rtol": 0.0, "atol": 0.0}, "never stop"),
        (LissaInfluence, {"scale": 0.0}, "scale must be > 0"),
        (LissaInfluence, {"dampen": 1.0}, "dampen must be in"),
        (LissaInfluence, {"maxiter": None}, "maxiter must be a positive integer"),
        (ArnoldiInfluence, {"rank": 0}, "rank must be a positive integer"),
        (ArnoldiInfluence, {"rank": 2.5}, "rank must be a positive integer"),
        (DirectInfluence, {"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_constructor_args_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(tanh_mlp(4, 5, 3), F.cross_entropy, **kwargs)


def test_bad_model_and_loss_raise():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        DirectInfluence(lambda x: x, F.cross_entropy)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        DirectInfluence(tanh_mlp(4, 5, 3), "cross_entropy")  # type: ignore[arg-type]


def test_rank_above_n_params_raises(mlp):
    inf = ArnoldiInfluence(mlp["model"], F.cross_entropy, rank=44)
    with pytest.raises(ValueError, match=r"rank=44 exceeds .* \(43\)"):
        inf.fit((mlp["x"], mlp["y"]))


@pytest.mark.parametrize("cls", [DirectInfluence, CgInfluence, LissaInfluence, ArnoldiInfluence])
def test_factors_before_fit_raise(mlp, cls):
    inf = cls(mlp["model"], F.cross_entropy)
    with pytest.raises(RuntimeError, match=r"call \.fit\(train_data\) first"):
        inf.test_factors(mlp["xt"], mlp["yt"])
    with pytest.raises(RuntimeError, match=r"call \.fit\(train_data\) first"):
        inf.train_factors(mlp["x"], mlp["y"])
    assert inf.influence_config()["fit_data"] is None


def test_mismatched_inputs_raise(mlp):
    inf = DirectInfluence(mlp["model"], F.cross_entropy, 0.01).fit((mlp["x"], mlp["y"]))
    with pytest.raises(ValueError, match="same leading sample dimension"):
        inf.test_factors(mlp["xt"], mlp["yt"][:3])
    with pytest.raises(TypeError, match="torch tensor or numpy array"):
        inf.train_factors([[0.0] * 4], mlp["yt"][:1])


# ---------------------------------------------------------------- dtype, numpy, config


def test_numpy_inputs_and_float32_model(mlp):
    model32 = tanh_mlp(4, 5, 3, seed=0).float()
    model32.load_state_dict({k: v.float() for k, v in mlp["model"].state_dict().items()})
    x_np, y_np = mlp["x"].numpy(), mlp["y"].numpy()  # float64 numpy -> model dtype float32
    inf = DirectInfluence(model32, F.cross_entropy, mlp["lam"]).fit((x_np, y_np))
    tf = inf.test_factors(mlp["xt"].numpy(), mlp["yt"].numpy())
    tr = inf.train_factors(x_np, y_np)
    assert tf.dtype == torch.float32 and tr.dtype == torch.float32
    assert tf.device == next(model32.parameters()).device
    assert _pearson((tf @ tr.T).double(), mlp["I"]) > 0.999


def test_influence_config_is_json_and_identifies_settings(mlp):
    data = (mlp["x"], mlp["y"])
    a = CgInfluence(mlp["model"], F.cross_entropy, 0.01, rtol=1e-5).fit(data)
    cfg = a.influence_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["backend"] == "CgInfluence" and cfg["regularization"] == 0.01
    assert cfg["rtol"] == 1e-5 and cfg["loss"] == "torch.nn.functional.cross_entropy"
    assert isinstance(cfg["fit_data"], str) and len(cfg["fit_data"]) == 64
    b = CgInfluence(mlp["model"], F.cross_entropy, 0.01, rtol=1e-6).fit(data)
    assert b.influence_config() != cfg
    c = CgInfluence(mlp["model"], F.cross_entropy, 0.01, rtol=1e-5).fit(
        (mlp["x"][:-1], mlp["y"][:-1])
    )
    assert c.influence_config()["fit_data"] != cfg["fit_data"]
    d = CgInfluence(mlp["model"], nn.CrossEntropyLoss(), 0.01, rtol=1e-5).fit(data)
    assert d.influence_config()["loss"] == "torch.nn.modules.loss.CrossEntropyLoss"
    for cls in (DirectInfluence, LissaInfluence, ArnoldiInfluence):
        assert cls(mlp["model"], F.cross_entropy).influence_config()["backend"] == cls.__name__


# ---------------------------------------------------------------- model fingerprints


def test_model_fingerprint_equal_for_equal_model_and_changes_with_values(mlp):
    fp = DirectInfluence(mlp["model"], F.cross_entropy).model_fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    clone = tanh_mlp(4, 5, 3, seed=5)
    clone.load_state_dict(mlp["model"].state_dict())
    assert DirectInfluence(clone, F.cross_entropy).model_fingerprint() == fp
    with torch.no_grad():
        next(clone.parameters())[0, 0] += 1e-12
    assert DirectInfluence(clone, F.cross_entropy).model_fingerprint() != fp
    assert DirectInfluence(clone.float(), F.cross_entropy).model_fingerprint() != fp


def test_model_fingerprint_is_taken_at_fit(mlp):
    model = tanh_mlp(4, 5, 3, seed=0)
    model.load_state_dict(mlp["model"].state_dict())
    inf = DirectInfluence(model, F.cross_entropy, 0.01).fit((mlp["x"], mlp["y"]))
    fp, before = inf.model_fingerprint(), _infl(inf, mlp)
    with torch.no_grad():
        next(model.parameters()).add_(
            1.0
        )  # factors and fingerprint stay those of the fitted snapshot
    assert inf.model_fingerprint() == fp
    assert torch.equal(_infl(inf, mlp), before)
