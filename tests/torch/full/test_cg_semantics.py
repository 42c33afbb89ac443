"""CgInfluence's stopping rule means what pyDVL 0.10's does, and pyDVL's own linear CG cases pass.

pyDVL's ``CgOperator`` stops a right-hand side ``g`` when ``||r|| < max(rtol**2 * ||g||,
atol**2)``; the default ``tol_mode="pydvl"`` follows it, ``tol_mode="scipy"`` reads the same
numbers as :func:`scipy.sparse.linalg.cg` (``||r|| <= max(rtol * ||g||, atol)``). Residuals are
checked here against the exact float64 Hessian (:mod:`exact_reference`), and pyDVL's
``test_influence_linear_model`` CG cases (a (4, 20) linear model, condition number 2, 200 train
and 20 test points, regularization 0.1, batches of 40) are ported with their data generation and
analytical influences and run with default arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exact_reference import block_slices, grads, hessian
from models import adam_fit, tanh_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infl_array.torch import BlockMode, CgInfluence, ConvergenceWarning, NystroemPreconditioner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAM = 0.05


@pytest.fixture(scope="module")
def mlp() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(48, 4, dtype=torch.float64, generator=gen)
    y = torch.argmax(x @ torch.randn(4, 3, dtype=torch.float64, generator=gen), dim=1)
    model = adam_fit(tanh_mlp(4, 5, 3, seed=1), x[:40], y[:40], lr=0.02, steps=200)
    h = hessian(model, F.cross_entropy, x[:40], y[:40])
    return {
        "model": model,
        "train": (x[:40], y[:40]),
        "test": (x[40:], y[40:]),
        "A": h + LAM * torch.eye(43, dtype=torch.float64),
        "g_test": grads(model, F.cross_entropy, x[40:], y[40:]),
    }


def _residuals(p: dict[str, Any], factors: torch.Tensor, structure: Any) -> list[torch.Tensor]:
    """``||g_b - A_bb x_b||`` and ``||g_b||`` of every (block, sample), exact A."""
    out = []
    for idx in block_slices(p["model"], structure):
        a = p["A"][idx][:, idx]
        r = p["g_test"][:, idx] - factors[:, idx] @ a
        out.append(torch.stack([r.norm(dim=1), p["g_test"][:, idx].norm(dim=1)]))
    return out


@pytest.mark.parametrize(("rtol", "atol"), [(1e-4, 1e-6), (1e-3, 1e-7), (1e-5, 1e-2)])
@pytest.mark.parametrize("structure", ["full", "layer_wise"])
@pytest.mark.parametrize("simultaneous", [False, True], ids=["per-column", "block-cg"])
def test_pydvl_rule_every_system_stops_below_its_tolerance(
    mlp, rtol, atol, structure, simultaneous
):
    inf = CgInfluence(
        mlp["model"],
        F.cross_entropy,
        LAM,
        rtol,
        atol,
        solve_simultaneously=simultaneous,
        block_structure=BlockMode(structure),
    ).fit(mlp["train"])
    factors = inf.test_factors(*mlp["test"])
    for res, bnorm in _residuals(mlp, factors, structure):
        tol = torch.clamp(rtol**2 * bnorm, min=atol**2)
        # the recursive residual CG tests and the true one differ by rounding only
        assert bool((res < tol * (1 + 1e-6) + 1e-14).all())
    # and no earlier iterate would have done: one iteration fewer does not meet the rule
    short = CgInfluence(
        mlp["model"],
        F.cross_entropy,
        LAM,
        rtol,
        atol,
        maxiter=inf.n_iter_ - 1,
        solve_simultaneously=simultaneous,
        block_structure=BlockMode(structure),
    ).fit(mlp["train"])
    with pytest.warns(ConvergenceWarning, match=r"\|\|residual\|\| < max\(rtol\*\*2\*\|\|g\|\|"):
        short.test_factors(*mlp["test"])


@pytest.mark.parametrize("structure", ["full", "layer_wise"])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_block_cg_shares_its_krylov_space(mlp, structure, preconditioned):
    # 60 right-hand sides: more than the 43 parameters, so block CG's first directions span
    # the whole space; per-column CG needs its usual iterations for each
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(60, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (60,), generator=gen)
    solved = {}
    for sim in (False, True):
        pre = NystroemPreconditioner(10) if preconditioned else None
        inf = CgInfluence(
            mlp["model"],
            F.cross_entropy,
            LAM,
            preconditioner=pre,
            solve_simultaneously=sim,
            block_structure=BlockMode(structure),
        ).fit(mlp["train"])
        solved[sim] = (inf.test_factors(x, y), inf.n_iter_)
    g = grads(mlp["model"], F.cross_entropy, x, y)
    exact = torch.zeros_like(g)
    for idx in block_slices(mlp["model"], structure):
        exact[:, idx] = torch.linalg.solve(mlp["A"][idx][:, idx], g[:, idx].T).T
    for factors, _ in solved.values():
        assert float((factors - exact).norm() / exact.norm()) < 1e-7
    (_, per_column), (_, block) = solved[False], solved[True]
    assert block is not None and per_column is not None
    assert block <= 3 < per_column


def test_block_cg_with_fewer_right_hand_sides_than_parameters(mlp):
    inf = CgInfluence(mlp["model"], F.cross_entropy, LAM, solve_simultaneously=True)
    factors = inf.fit(mlp["train"]).test_factors(*mlp["test"])
    exact = torch.linalg.solve(mlp["A"], mlp["g_test"].T).T
    assert float((factors - exact).norm() / exact.norm()) < 1e-7
    single = inf.test_factors(mlp["test"][0][:1], mlp["test"][1][:1])  # one column: plain CG
    assert float((single - exact[:1]).norm() / exact[:1].norm()) < 1e-7


def test_scipy_rule_and_its_lower_accuracy(mlp):
    kwargs = {"rtol": 1e-4, "atol": 1e-6}
    scipy_cg = CgInfluence(mlp["model"], F.cross_entropy, LAM, tol_mode="scipy", **kwargs)
    pydvl_cg = CgInfluence(mlp["model"], F.cross_entropy, LAM, **kwargs)
    f_scipy = scipy_cg.fit(mlp["train"]).test_factors(*mlp["test"])
    f_pydvl = pydvl_cg.fit(mlp["train"]).test_factors(*mlp["test"])
    [(res, bnorm)] = _residuals(mlp, f_scipy, "full")
    assert bool((res <= torch.clamp(1e-4 * bnorm, min=1e-6) * (1 + 1e-6)).all())
    exact = torch.linalg.solve(mlp["A"], mlp["g_test"].T).T
    err_scipy = float((f_scipy - exact).norm(dim=1).max() / exact.norm(dim=1).min())
    err_pydvl = float((f_pydvl - exact).norm(dim=1).max() / exact.norm(dim=1).min())
    assert err_pydvl < 1e-6 < err_scipy  # same numbers, pyDVL's reading is far more accurate
    assert pydvl_cg.n_iter_ is not None and scipy_cg.n_iter_ is not None
    assert scipy_cg.n_iter_ < pydvl_cg.n_iter_


# ------------------------------------------------------------------ pyDVL's linear CG cases


def _random_matrix_with_condition_number(n: int, condition_number: float, seed: int) -> np.ndarray:
    """pyDVL 0.10's ``pydvl.utils.random_matrix_with_condition_number``, ported."""
    rng = np.random.default_rng(seed)
    log_cond = np.log(condition_number)
    exp_vec = np.arange(
        -log_cond / 4.0, log_cond * (n + 1) / (4 * (n - 1)), log_cond / (2.0 * (n - 1))
    )[:n]
    u, _ = np.linalg.qr((rng.uniform(size=(n, n)) - 5.0) * 200)
    v, _ = np.linalg.qr((rng.uniform(size=(n, n)) - 5.0) * 200)
    p = u @ np.diag(np.exp(exp_vec)) @ v.T
    return p @ p.T


def _linear_case(seed: int) -> dict[str, Any]:
    """pyDVL's linear_model((4, 20), 2), add_noise_to_linear_model(200, 20) and analytical
    influences (its linear_derivative_analytical / linear_hessian_analytical), ported."""
    rng = np.random.default_rng(seed)
    out_dim, in_dim, lam = 4, 20, 0.1
    a = _random_matrix_with_condition_number(in_dim, 2.0, seed)[:out_dim, :in_dim]
    b = rng.uniform(size=out_dim)
    x_train = rng.uniform(size=(200, in_dim))
    y_train = rng.normal(x_train @ a.T + b, 0.01)
    x_test = rng.uniform(size=(20, in_dim))
    y_test = rng.normal(x_test @ a.T + b, 0.01)

    def derivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = x @ a.T + b - y
        return 2 * np.hstack([(r[:, :, None] * x[:, None, :]).reshape(len(x), -1), r]) / out_dim

    d2_theta = np.kron(np.eye(out_dim), x_train.T @ x_train / 200)
    cross = np.kron(np.eye(out_dim), x_train.mean(0, keepdims=True))
    h = np.block([[d2_theta, cross.T], [cross, np.eye(out_dim)]]) * 2 / out_dim
    h += lam * np.eye(len(h))
    g_train = derivative(x_train, y_train)
    factors = np.linalg.solve(h, derivative(x_test, y_test).T).T
    model = nn.Linear(in_dim, out_dim).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(a))
        model.bias.copy_(torch.as_tensor(b))
    return {
        "model": model,
        "train": (torch.as_tensor(x_train), torch.as_tensor(y_train)),
        "test": (torch.as_tensor(x_test), torch.as_tensor(y_test)),
        "analytical": factors @ g_train.T,
        "sym_analytical": np.linalg.solve(h, g_train.T).T @ g_train.T,
        "lam": lam,
    }


def _upper_quantile_equivalence(approx: np.ndarray, exact: np.ndarray, rtol: float) -> bool:
    """pyDVL's check: the values above the 0.9 quantile of |approx| agree to rtol."""
    mask = np.abs(approx) > np.quantile(np.abs(approx), 0.9)
    return bool(np.allclose(approx[mask], exact[mask], rtol=rtol))


@pytest.mark.parametrize(("case", "rtol"), [("cg", 1e-1), ("block-cg", 1e-4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pydvl_linear_cg_cases_with_default_arguments(case: str, rtol: float, seed: int) -> None:
    p = _linear_case(seed)
    loader = DataLoader(TensorDataset(*p["train"]), batch_size=40)
    kwargs: dict[str, Any] = {}
    if case == "block-cg":
        kwargs = {"preconditioner": NystroemPreconditioner(10), "solve_simultaneously": True}
    torch.manual_seed(seed)
    inf = CgInfluence(p["model"], F.mse_loss, regularization=p["lam"], **kwargs).fit(loader)
    values = inf.influences(*p["test"], *p["train"]).numpy()
    sym = inf.influences(*p["train"], *p["train"]).numpy()
    x_train, y_train = (t.numpy() for t in p["train"])
    assert _upper_quantile_equivalence(values, p["analytical"], rtol)
    err = np.abs(values - p["analytical"]).max() / np.abs(p["analytical"]).max()
    assert err < 1e-7  # pyDVL's rule at its defaults: residual below 1e-8 * ||g||
    assert _upper_quantile_equivalence(sym, p["sym_analytical"], rtol)
    assert np.abs(sym - p["sym_analytical"]).max() / np.abs(p["sym_analytical"]).max() < 1e-7
    # the scipy reading of the same numbers was what these cases failed on (error ~1e-4)
    old = CgInfluence(p["model"], F.mse_loss, p["lam"], tol_mode="scipy", **kwargs).fit(loader)
    old_err = np.abs(old.influences(*p["test"], x_train, y_train).numpy() - p["analytical"]).max()
    assert old_err / np.abs(p["analytical"]).max() > 10 * err


def test_indefinite_system_warns_instead_of_returning_garbage_silently():
    torch.manual_seed(0)
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 2, (30,))
    model = tanh_mlp(3, 4, 2, seed=None)  # untrained, drawn after the data
    h = hessian(model, F.cross_entropy, x, y)
    assert float(torch.linalg.eigvalsh(h)[0]) + 0.1 < 0  # H + 0.1*Id is indefinite
    for simultaneous in (False, True):
        inf = CgInfluence(model, F.cross_entropy, 0.1, solve_simultaneously=simultaneous)
        with pytest.warns(ConvergenceWarning, match=r"regularization\*Id is not positive definite"):
            inf.fit((x, y)).test_factors(x[:3], y[:3])
