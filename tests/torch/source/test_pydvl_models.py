"""pyDVL's influence models and options against exact float64 references built here.

The references are written in this file, independently of the library: the explicit Hessian of
the mean loss (``torch.func.hessian`` over the flattened parameters), per-sample gradients by
plain autograd one sample at a time, the Gauss-Newton matrix ``1/N sum_i g_i g_i^T``, the
block-diagonal solve over the parameter blocks (block slices computed here from the parameter
shapes), the exact top-``rank`` eigen-truncation, the Nystroem closed form
``(C Omega)(Omega^T C Omega)^+ (C Omega)^T`` with the same sketch, and DataInf's
``1/N sum_i (g_i g_i^T + lambda*Id)^-1``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exact_reference import block_slices, block_solve, grads, hessian
from models import adam_fit, tanh_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infl_array as ia
from infl_array.torch import (
    ArnoldiInfluence,
    BlockMode,
    CgInfluence,
    ConvergenceWarning,
    DirectInfluence,
    InverseHarmonicMeanInfluence,
    JacobiPreconditioner,
    LissaInfluence,
    NystroemPreconditioner,
    NystroemSketchInfluence,
    SecondOrderMode,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GN = SecondOrderMode.GAUSS_NEWTON
N_TRAIN, N_TEST, LAM = 40, 6, 0.05


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _problem(model: nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    train, test = (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])
    g_train, g_test = grads(model, loss, *train), grads(model, loss, *test)
    return {
        "model": model,
        "loss": loss,
        "train": train,
        "test": test,
        "H": hessian(model, loss, *train),
        "GN": g_train.T @ g_train / N_TRAIN,
        "g_train": g_train,
        "g_test": g_test,
    }


@pytest.fixture(scope="module")
def mlp() -> dict[str, Any]:
    """4 -> 5 -> 3 tanh MLP (43 parameters), cross-entropy, trained a bit."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, 4, dtype=torch.float64, generator=gen)
    y = torch.argmax(x @ torch.randn(4, 3, dtype=torch.float64, generator=gen), dim=1)
    model = adam_fit(tanh_mlp(4, 5, 3, seed=0), x[:N_TRAIN], y[:N_TRAIN], lr=0.02, steps=200)
    return _problem(model, F.cross_entropy, x, y)


@pytest.fixture(scope="module")
def linreg() -> dict[str, Any]:
    """Least squares with 2 outputs (every Hessian eigenvalue twice), positive definite H."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(N_TRAIN + N_TEST, 4, dtype=torch.float64, generator=gen)
    y = x @ torch.randn(4, 2, dtype=torch.float64, generator=gen)
    model = nn.Sequential(nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(0.3)
        model[0].bias.fill_(-0.1)
    return _problem(model, F.mse_loss, x, y + 0.1)


def _custom(model: nn.Module) -> OrderedDict[str, list[str]]:
    """Reverse order, the last parameter left out."""
    names = [n for n, _ in model.named_parameters()]
    return OrderedDict(late=names[2:3], early=names[:2])


def _structure(p: dict[str, Any], name: str) -> tuple[Any, Any]:
    """(argument for the library, spec for _block_slices)."""
    if name == "custom":
        return _custom(p["model"]), _custom(p["model"])
    return BlockMode(name), name


def _values(inf: Any, p: dict[str, Any]) -> torch.Tensor:
    return inf.influences(*p["test"], *p["train"])


def _exact(p: dict[str, Any], structure: str, mode: str = "hessian", regs: Any = None):
    model_structure = _structure(p, structure)[1]
    blocks = block_slices(p["model"], model_structure)
    regs = [LAM] * len(blocks) if regs is None else regs
    c = p["GN"] if mode == "gauss_newton" else p["H"]
    return block_solve(c, blocks, p["g_test"], p["g_train"], regs)


# ------------------------------------------------------------------ Direct, CG, LiSSA

STRUCTURES = ["full", "layer_wise", "parameter_wise", "custom"]


@pytest.mark.parametrize("mode", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_direct_blocks_and_modes(mlp, structure, mode):
    arg, _ = _structure(mlp, structure)
    inf = DirectInfluence(mlp["model"], mlp["loss"], LAM, arg, SecondOrderMode(mode))
    inf.fit(mlp["train"])
    assert rel(_values(inf, mlp), _exact(mlp, structure, mode)) < 1e-10


@pytest.mark.parametrize(
    ("structure", "mode"),
    [("full", "hessian"), ("layer_wise", "hessian"), ("custom", "gauss_newton")],
)
def test_cg_defaults_blocks_and_modes(mlp, structure, mode):
    arg, _ = _structure(mlp, structure)
    inf = CgInfluence(
        mlp["model"], mlp["loss"], LAM, block_structure=arg, second_order_mode=SecondOrderMode(mode)
    )
    inf.fit(mlp["train"])
    assert rel(_values(inf, mlp), _exact(mlp, structure, mode)) < 1e-6


@pytest.mark.parametrize(
    "pre",
    [JacobiPreconditioner(), JacobiPreconditioner(3, seed=1), NystroemPreconditioner(5, seed=0)],
)
@pytest.mark.parametrize("structure", ["full", "parameter_wise"])
def test_cg_preconditioners(mlp, pre, structure):
    arg, _ = _structure(mlp, structure)
    inf = CgInfluence(mlp["model"], mlp["loss"], LAM, preconditioner=pre, block_structure=arg)
    inf.fit(mlp["train"])
    assert not pre.is_fitted  # the template stays unfitted; fitted copies live in the model
    assert rel(_values(inf, mlp), _exact(mlp, structure)) < 1e-6
    assert inf.influence_config()["preconditioner"]["name"] == type(pre).__name__


def test_nystroem_preconditioner_speeds_up_cg(mlp):
    """On a positive semi-definite curvature (Gauss-Newton) with a small regularization."""
    kwargs: dict[str, Any] = {"regularization": 1e-3, "second_order_mode": GN}
    plain = CgInfluence(mlp["model"], mlp["loss"], **kwargs).fit(mlp["train"])
    pre = NystroemPreconditioner(20, seed=0)
    fast = CgInfluence(mlp["model"], mlp["loss"], preconditioner=pre, **kwargs).fit(mlp["train"])
    # both meet ||r|| < 1e-8 ||g||; with lambda = 1e-3 the condition number is ~100
    assert rel(fast.test_factors(*mlp["test"]), plain.test_factors(*mlp["test"])) < 1e-5
    assert plain.n_iter_ is not None and fast.n_iter_ is not None
    assert fast.n_iter_ < plain.n_iter_ / 2


@pytest.mark.parametrize(
    ("structure", "mode"), [("layer_wise", "hessian"), ("full", "gauss_newton")]
)
def test_lissa_blocks_and_modes(mlp, structure, mode):
    arg, _ = _structure(mlp, structure)
    c = mlp["GN"] if mode == "gauss_newton" else mlp["H"]
    scale = 1.2 * float(torch.linalg.eigvalsh(c)[-1] + LAM)
    inf = LissaInfluence(
        mlp["model"],
        mlp["loss"],
        LAM,
        maxiter=20000,
        scale=scale,
        rtol=1e-10,
        block_structure=arg,
        second_order_mode=SecondOrderMode(mode),
    )
    inf.fit(mlp["train"])
    assert rel(_values(inf, mlp), _exact(mlp, structure, mode)) < 1e-6


def test_regularization_dict_per_block(linreg):
    """Keys: a subset of the block names; a missing block gets no regularization."""
    reg = {"0.weight": 0.2}
    inf = DirectInfluence(linreg["model"], linreg["loss"], reg, BlockMode.PARAMETER_WISE)
    inf.fit(linreg["train"])
    assert inf.regularization == {"0.weight": 0.2, "0.bias": None}
    assert inf.influence_config()["regularization"] == {"0.weight": 0.2, "0.bias": None}
    want = _exact(linreg, "parameter_wise", regs=[0.2, 0.0])
    assert rel(_values(inf, linreg), want) < 1e-10
    cg = CgInfluence(
        linreg["model"],
        linreg["loss"],
        {"0.bias": 0.3, "0.weight": 0.1},
        block_structure=BlockMode.PARAMETER_WISE,
    )
    cg.fit(linreg["train"])
    assert rel(_values(cg, linreg), _exact(linreg, "parameter_wise", regs=[0.1, 0.3])) < 1e-6


def test_hessian_average_batch_weights_loader_batches(mlp):
    """hessian_average="batch": every batch of the fit DataLoader weighs the same (pyDVL)."""
    loader = DataLoader(TensorDataset(*mlp["train"]), batch_size=16)  # 16, 16, 8
    x, y = mlp["train"]
    hs = [hessian(mlp["model"], mlp["loss"], x[s : s + 16], y[s : s + 16]) for s in (0, 16, 32)]
    h_batch = torch.stack(hs).mean(0)
    want = mlp["g_test"] @ torch.linalg.solve(
        h_batch + LAM * torch.eye(43, dtype=torch.float64), mlp["g_train"].T
    )
    inf = CgInfluence(mlp["model"], mlp["loss"], LAM, hessian_average="batch").fit(loader)
    assert rel(_values(inf, mlp), want) < 1e-6
    default = CgInfluence(mlp["model"], mlp["loss"], LAM).fit(loader)
    assert rel(_values(default, mlp), _exact(mlp, "full")) < 1e-6
    assert rel(want, _exact(mlp, "full")) > 1e-3  # the two conventions differ here


# ------------------------------------------------------------------ Arnoldi


def _truncation(c: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(c)
    top = torch.argsort(evals.abs(), descending=True)[:rank]
    return evals[top], evecs[:, top]


@pytest.mark.parametrize("woodbury", [False, True])
@pytest.mark.parametrize("structure", ["full", "layer_wise"])
@pytest.mark.parametrize("mode", ["hessian", "gauss_newton"])
def test_arnoldi_low_rank_against_exact_truncation(mlp, woodbury, structure, mode):
    rank = 6
    arg, spec = _structure(mlp, structure)
    c = mlp["GN"] if mode == "gauss_newton" else mlp["H"]
    want = torch.zeros(N_TEST, N_TRAIN, dtype=torch.float64)
    for idx in block_slices(mlp["model"], spec):
        mu, v = _truncation(c[idx][:, idx], rank)
        gt, gr = mlp["g_test"][:, idx] @ v, mlp["g_train"][:, idx] @ v
        want += (gt / (mu + LAM)) @ gr.T
        if woodbury:  # plus the complement of V, divided by lambda
            pt = mlp["g_test"][:, idx] - gt @ v.T
            want += pt @ (mlp["g_train"][:, idx] - gr @ v.T).T / LAM
    inf = ArnoldiInfluence(
        mlp["model"],
        mlp["loss"],
        LAM,
        rank=rank,
        tol=1e-10,
        block_structure=arg,
        second_order_mode=SecondOrderMode(mode),
        use_woodbury=woodbury,
    )
    inf.fit(mlp["train"])
    assert rel(_values(inf, mlp), want) < 1e-6
    width = inf.train_factors(*mlp["test"]).shape[1]
    assert width == (43 if woodbury else rank * len(inf.block_names))


def test_arnoldi_full_rank_woodbury_is_exact(mlp):
    inf = ArnoldiInfluence(mlp["model"], mlp["loss"], LAM, rank=43, use_woodbury=True).fit(
        mlp["train"]
    )
    assert rel(_values(inf, mlp), _exact(mlp, "full")) < 1e-8


def test_arnoldi_repeated_eigenvalues_match_exact_truncation():
    """4-output least squares: every eigenvalue 4 times; scipy's eigsh alone misses copies."""
    from scipy.sparse.linalg import eigsh

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 10, dtype=torch.float64, generator=gen)
    y = torch.rand(200, 4, dtype=torch.float64, generator=gen)
    model = nn.Sequential(nn.Linear(10, 4)).double()
    p = _problem(model, F.mse_loss, torch.cat([x, x[:N_TEST]]), torch.cat([y, y[:N_TEST]]))
    p["train"], p["g_train"] = (x, y), grads(model, F.mse_loss, x, y)
    h = hessian(model, F.mse_loss, x, y)
    rank = 8
    mu, v = _truncation(h, rank)
    assert torch.allclose(mu[:4], mu[0]) and torch.allclose(mu[4:], mu[4])  # 2 x 4 copies
    v0 = np.random.default_rng(0).standard_normal(44)
    plain = eigsh(h.numpy(), k=rank, which="LM", v0=v0, tol=1e-6)[0]  # pyDVL's default tol
    assert not np.allclose(np.sort(plain), np.sort(mu.numpy()), rtol=1e-6)  # a wrong truncation
    want = (p["g_test"] @ v / (mu + LAM)) @ (p["g_train"] @ v).T
    inf = ArnoldiInfluence(model, F.mse_loss, LAM, rank=rank).fit((x, y))
    assert rel(_values(inf, p), want) < 1e-6
    assert inf.eigenvalues_ is not None
    assert torch.allclose(inf.eigenvalues_.sort().values, mu.sort().values, rtol=1e-8)


# ------------------------------------------------------------------ Nystroem, DataInf


def _nystroem_closed_form(c: torch.Tensor, omega: torch.Tensor, lam: float) -> torch.Tensor:
    """(C_nys + lambda*Id)^-1 with C_nys = (C Omega)(Omega^T C Omega)^+ (C Omega)^T."""
    y = c @ omega
    c_nys = y @ torch.linalg.pinv(omega.T @ y, hermitian=True) @ y.T
    return torch.linalg.inv(c_nys + lam * torch.eye(c.shape[0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("fixture", "structure", "mode"),
    [
        ("linreg", "full", "hessian"),
        ("linreg", "parameter_wise", "hessian"),
        ("mlp", "full", "gauss_newton"),
        ("mlp", "custom", "gauss_newton"),
    ],
)
def test_nystroem_closed_form_same_sketch(request, fixture, structure, mode):
    p = request.getfixturevalue(fixture)
    arg, spec = _structure(p, structure)
    rank, seed = 5, 3
    c = p["GN"] if mode == "gauss_newton" else p["H"]
    gen = torch.Generator().manual_seed(seed)  # one stream over the blocks, in block order
    want = torch.zeros(N_TEST, N_TRAIN, dtype=torch.float64)
    for idx in block_slices(p["model"], spec):
        omega = torch.linalg.qr(torch.randn(len(idx), rank, generator=gen, dtype=torch.float64))[0]
        inv = _nystroem_closed_form(c[idx][:, idx], omega, LAM)
        want += p["g_test"][:, idx] @ inv @ p["g_train"][:, idx].T
    inf = NystroemSketchInfluence(
        p["model"], p["loss"], LAM, rank, arg, SecondOrderMode(mode), seed=seed
    )
    inf.fit(p["train"])
    assert rel(_values(inf, p), want) < 1e-8


def test_nystroem_global_generator_and_sketch_identity(mlp):
    """seed=None draws from torch's global generator (pyDVL); the config records the sketch."""
    make = lambda: NystroemSketchInfluence(mlp["model"], mlp["loss"], LAM, 5, second_order_mode=GN)  # noqa: E731
    torch.manual_seed(7)
    a = make().fit(mlp["train"])
    torch.manual_seed(7)
    b = make().fit(mlp["train"])
    c = make().fit(mlp["train"])  # another draw
    assert a.influence_config() == b.influence_config()
    assert torch.equal(_values(a, mlp), _values(b, mlp))
    assert a.influence_config()["sketch"] != c.influence_config()["sketch"]
    assert make().influence_config()["sketch"] is None


@pytest.mark.parametrize("structure", ["full", "layer_wise", "custom"])
def test_datainf_closed_form(mlp, structure):
    _, spec = _structure(mlp, structure)
    arg = _structure(mlp, structure)[0]
    want = torch.zeros(N_TEST, N_TRAIN, dtype=torch.float64)
    for idx in block_slices(mlp["model"], spec):
        g = mlp["g_train"][:, idx]
        eye = torch.eye(len(idx), dtype=torch.float64)
        inv_mean = sum(torch.linalg.inv(torch.outer(gi, gi) + LAM * eye) for gi in g) / len(g)
        want += mlp["g_test"][:, idx] @ inv_mean @ g.T
    loader = DataLoader(TensorDataset(*mlp["train"]), batch_size=7)  # ragged: a mean over points
    inf = InverseHarmonicMeanInfluence(mlp["model"], mlp["loss"], LAM, arg, batch_size=7).fit(
        loader
    )
    assert rel(_values(inf, mlp), want) < 1e-10


# ------------------------------------------------------------------ through an InfluenceArray

MODELS = {
    "direct-layer-wise": lambda m, loss: DirectInfluence(m, loss, LAM, BlockMode.LAYER_WISE),
    "direct-gauss-newton": lambda m, loss: DirectInfluence(m, loss, LAM, second_order_mode=GN),
    "cg-preconditioned": lambda m, loss: CgInfluence(
        m, loss, LAM, preconditioner=JacobiPreconditioner(seed=0)
    ),
    "lissa-parameter-wise": lambda m, loss: LissaInfluence(
        m, loss, LAM, scale=1.0, rtol=1e-6, block_structure=BlockMode.PARAMETER_WISE
    ),
    "arnoldi-woodbury": lambda m, loss: ArnoldiInfluence(m, loss, LAM, rank=5, use_woodbury=True),
    "nystroem": lambda m, loss: NystroemSketchInfluence(
        m, loss, LAM, 5, second_order_mode=GN, seed=0
    ),
    "datainf": lambda m, loss: InverseHarmonicMeanInfluence(m, loss, LAM, BlockMode.LAYER_WISE),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_backs_an_influence_array(mlp, tmp_path: Path, name: str):
    inf = MODELS[name](mlp["model"], mlp["loss"]).fit(mlp["train"])
    cfg = inf.influence_config()
    assert json.loads(json.dumps(cfg)) == cfg
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        inf,
        test=mlp["test"],
        train=mlp["train"],
        block_shape=(4, 16),
        dtype="float64",
    )
    full = np.asarray(arr)
    np.testing.assert_allclose(full, _values(inf, mlp).numpy(), rtol=1e-10, atol=1e-14)
    again = ia.open(
        tmp_path / "s",
        MODELS[name](mlp["model"], mlp["loss"]).fit(mlp["train"]),
        test=mlp["test"],
        train=mlp["train"],
    )
    np.testing.assert_array_equal(again[1:5, ::3], full[1:5, ::3])
    other = DirectInfluence(mlp["model"], mlp["loss"], LAM, BlockMode.PARAMETER_WISE).fit(
        mlp["train"]
    )
    with pytest.raises(ia.StaleCacheError, match="backend"):
        ia.open(tmp_path / "s", other, test=mlp["test"], train=mlp["train"])


def test_config_records_structure_and_mode(mlp):
    inf = CgInfluence(
        mlp["model"], mlp["loss"], LAM, block_structure=_custom(mlp["model"]), second_order_mode=GN
    )
    cfg = inf.influence_config()
    assert cfg["block_structure"] == [["late", ["2.weight"]], ["early", ["0.weight", "0.bias"]]]
    assert cfg["second_order_mode"] == "gauss_newton" and cfg["tol_mode"] == "pydvl"
    assert inf.block_names == ["late", "early"] and inf.n_params == 15 + 20 + 5
    assert (
        DirectInfluence(mlp["model"], mlp["loss"]).influence_config()["block_structure"] == "full"
    )


def test_enums_by_value_and_foreign_enums(mlp):
    class Foreign(Enum):  # pyDVL's own BlockMode / SecondOrderMode have these values
        LAYER_WISE = "layer_wise"
        GAUSS_NEWTON = "gauss_newton"

    inf = DirectInfluence(mlp["model"], mlp["loss"], LAM, Foreign.LAYER_WISE, Foreign.GAUSS_NEWTON)
    assert inf.block_structure is BlockMode.LAYER_WISE and inf.second_order_mode is GN
    assert DirectInfluence(mlp["model"], mlp["loss"], LAM, "parameter_wise").block_names == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_frozen_parameter_in_a_block_is_left_out_with_a_warning(mlp):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    model.load_state_dict(mlp["model"].state_dict())
    model[0].bias.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"'0\.bias' of block 'a' is frozen"):
        inf = DirectInfluence(model, F.cross_entropy, LAM, {"a": ["0.weight", "0.bias"]})
    assert inf.n_params == 20


# ------------------------------------------------------------------ bad arguments


def _m() -> nn.Module:
    return tanh_mlp(4, 5, 3, seed=None)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, block_structure="rows"),
            "block_structure must be one of BlockMode",
        ),
        (lambda: DirectInfluence(_m(), F.cross_entropy, block_structure={}), "mapping is empty"),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, block_structure={"a": "0.weight"}),
            "must map to a list of parameter names",
        ),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, block_structure={"a": []}),
            "at least one parameter name",
        ),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, block_structure={1: ["0.weight"]}),
            "block names must be strings",
        ),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, block_structure={"a": ["0.w"]}),
            r"parameter '0\.w', which Sequential does not have",
        ),
        (
            lambda: DirectInfluence(
                nn.Linear(2, 2), F.mse_loss, block_structure=BlockMode.LAYER_WISE
            ),
            "LAYER_WISE found no child module",
        ),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, second_order_mode="fisher"),
            "second_order_mode must be one of",
        ),
        (
            lambda: DirectInfluence(
                _m(), F.cross_entropy, {"0.weight": 0.1, "x": 1.0}, BlockMode.PARAMETER_WISE
            ),
            r"keys \['x'\] are not block names",
        ),
        (
            lambda: DirectInfluence(_m(), F.cross_entropy, {"": -1.0}),
            r"regularization\[''\] must be >= 0",
        ),
        (lambda: DirectInfluence(_m(), F.cross_entropy, "0.1"), "finite number >= 0 or None"),
        (
            lambda: InverseHarmonicMeanInfluence(_m(), F.cross_entropy, 0.0),
            "regularization must be > 0",
        ),
        (
            lambda: InverseHarmonicMeanInfluence(
                _m(), F.cross_entropy, {"0.weight": 0.1}, BlockMode.PARAMETER_WISE
            ),
            r"regularization\['0\.bias'\] must be a number > 0, got None",
        ),
        (
            lambda: NystroemSketchInfluence(_m(), F.cross_entropy, None, 5),
            "must be a number > 0, got None",
        ),
        (
            lambda: NystroemSketchInfluence(_m(), F.cross_entropy, 0.1, 0),
            "rank must be a positive integer",
        ),
        (
            lambda: NystroemSketchInfluence(_m(), F.cross_entropy, 0.1, 5, seed=1.5),
            "seed must be an integer or None",
        ),
        (
            lambda: NystroemSketchInfluence(_m(), F.cross_entropy, 0.1, 5, hessian_average="mean"),
            "hessian_average must be 'sample'",
        ),
        (
            lambda: ArnoldiInfluence(_m(), F.cross_entropy, 0.0, use_woodbury=True),
            "regularization must be > 0",
        ),
        (
            lambda: ArnoldiInfluence(_m(), F.cross_entropy, rank=5, krylov_dimension=5),
            "krylov_dimension must exceed rank",
        ),
        (
            lambda: ArnoldiInfluence(_m(), F.cross_entropy, eigen_computation_on_gpu=True),
            "eigen_computation_on_gpu=True is not supported",
        ),
        (
            lambda: CgInfluence(_m(), F.cross_entropy, tol_mode="relative"),
            "tol_mode must be 'pydvl'",
        ),
        (lambda: JacobiPreconditioner(0), "num_samples_estimator must be a positive integer"),
        (lambda: JacobiPreconditioner(seed="0"), "seed must be an integer or None"),
        (lambda: NystroemPreconditioner(0), "rank must be a positive integer"),
    ],
    ids=[
        "structure-name",
        "structure-empty",
        "structure-str",
        "structure-no-params",
        "structure-key-type",
        "structure-unknown-param",
        "layer-wise-leaf",
        "second-order-mode",
        "reg-unknown-key",
        "reg-negative",
        "reg-string",
        "datainf-reg-zero",
        "datainf-reg-incomplete",
        "nystroem-reg-none",
        "nystroem-rank",
        "nystroem-seed",
        "hessian-average",
        "arnoldi-woodbury-reg",
        "arnoldi-krylov",
        "arnoldi-gpu",
        "cg-tol-mode",
        "jacobi-samples",
        "jacobi-seed",
        "nystroem-pre-rank",
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_preconditioner_and_unfitted_preconditioner_raise():
    with pytest.raises(
        TypeError, match=r"preconditioner must be an infl_array\.torch JacobiPreconditioner"
    ):
        CgInfluence(_m(), F.cross_entropy, preconditioner="jacobi")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="JacobiPreconditioner is not fitted"):
        JacobiPreconditioner().solve(torch.ones(3))


def test_all_frozen_block_raises(mlp):
    model = _m()
    model[0].bias.requires_grad_(False)
    with (
        pytest.warns(UserWarning, match="frozen"),
        pytest.raises(ValueError, match="no trainable parameter"),
    ):
        DirectInfluence(model, F.cross_entropy, LAM, {"a": ["0.bias"]})


def test_rank_above_n_params_raises_and_small_blocks_keep_all(mlp):
    with pytest.raises(ValueError, match=r"rank=44 exceeds the number of parameters \(43\)"):
        ArnoldiInfluence(mlp["model"], mlp["loss"], LAM, rank=44).fit(mlp["train"])
    # parameter-wise blocks smaller than rank keep all their eigenpairs: exact per block
    inf = ArnoldiInfluence(
        mlp["model"], mlp["loss"], LAM, rank=20, block_structure=BlockMode.PARAMETER_WISE
    )
    inf.fit(mlp["train"])
    assert [lr.vectors.shape[1] for lr in inf.low_rank_] == [20, 5, 15, 3]
    assert rel(_values(inf, mlp), _exact(mlp, "parameter_wise")) < 1e-8


def test_arnoldi_not_converging_warns_with_the_fix(mlp):
    with pytest.warns(ConvergenceWarning, match="ARPACK did not converge.*Increase max_iter"):
        ArnoldiInfluence(mlp["model"], mlp["loss"], LAM, rank=6, max_iter=1, tol=0).fit(
            mlp["train"],
            lazy=False,  # the eigenpairs are computed on first use otherwise
        )
