"""Every pyDVL 0.10 influence model and option, side by side with infl_array's, float64.

Runs only in the pyDVL venv (numpy<2), through ``bash .ci/pydvl_env.sh``. Three models:

* ``linear``: single-output least squares (``Sequential(Linear(6, 1))``, MSE), with a closed
  form for the Hessian, the Gauss-Newton matrix and the gradients computed here in numpy;
* ``mlp``: ``Linear(5, 6) - Tanh - Linear(6, 3)``, cross-entropy, trained a few steps;
* ``cnn``: ``Conv2d(1, 2, 3) - Tanh - Flatten - Linear(18, 3)`` on 5x5 images, cross-entropy.

Each case builds the same model with pyDVL and with infl_array (same arguments, pyDVL's names)
and asserts ``max |ours - pyDVL| / max |pyDVL| <= 1e-6`` on a test x train influence matrix
(the measured value is printed and written to ``$PYDVL_COMPAT_REPORT``). Batches are equal in
size (pyDVL's operators weight batches equally; see ``test_ragged_batches``).

Where pyDVL 0.10 has a bug on a code path, the check goes through pyDVL's correct path or fixes
the bug in the test, says so, and shows the bug in a test of its own:

* pyDVL's ``PointAveraging`` (Gauss-Newton and DataInf operators) normalises by the number of
  right-hand sides instead of data points, so those operators are right only when applied to ONE
  row at a time (``test_pydvl_point_averaging_bug``). DataInf, Gauss-Newton CG and Direct
  Gauss-Newton are therefore compared with pyDVL's factors computed one test point at a time;
  Arnoldi and Nystroem with Gauss-Newton (whose products pyDVL applies to many vectors at once)
  are compared with pyDVL whose ``PointAveraging`` is replaced by its ``ChunkAveraging`` (equal
  batches: the same mean).
* pyDVL's ``gauss_newton`` (used by its ``DirectInfluence``) divides by ``(n_batches - 1) *
  n_params`` instead of ``N`` (``test_pydvl_gauss_newton_bug``); Direct with Gauss-Newton is
  compared with pyDVL's CG on the Gauss-Newton operator (one test point at a time, tight
  tolerance) instead.
* pyDVL's ``_build_regularization_dict`` raises when the keys of a regularization dict ARE a
  subset of the block names (the condition is inverted); pyDVL is given the same dict plus one
  unused key, which takes its working path.
* Randomised methods: the Nystroem sketch is shared (pyDVL's ``torch.randn`` draws are recorded
  and replayed to ours), so the comparison is exact; the CG preconditioners are random but CG
  converges to its tolerance whatever the draw, so the comparison is at the tolerance.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydvl.influence import InfluenceMode
from pydvl.influence.torch import influence_function_model as pydvl_models
from pydvl.influence.torch import operator as pydvl_operator
from pydvl.influence.torch.batch_operation import ChunkAveraging
from pydvl.influence.torch.preconditioner import (
    JacobiPreconditioner as PJacobi,
)
from pydvl.influence.torch.preconditioner import (
    NystroemPreconditioner as PNystroemPre,
)
from pydvl.influence.torch.util import BlockMode as PBlockMode
from pydvl.influence.torch.util import SecondOrderMode as PSecondOrderMode
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infl_array as ia
from infl_array import torch as ours
from infl_array.torch import BlockMode, SecondOrderMode

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydvl"),
    pytest.mark.filterwarnings("ignore::FutureWarning:pydvl"),
    pytest.mark.usefixtures("one_torch_thread"),  # tests/conftest.py
]

TOL = 1e-6
N_TRAIN, N_TEST, BATCH = 40, 8, 10
REPORT: dict[str, float] = {}
GN = SecondOrderMode.GAUSS_NEWTON
P_GN = PSecondOrderMode.GAUSS_NEWTON


def record(name: str, value: float) -> float:
    REPORT[name] = value
    print(f"{name}: {value:.3e}")
    path = os.environ.get("PYDVL_COMPAT_REPORT")
    if path:  # several check files share the report: merge into what is there
        report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        report.update(REPORT)
        Path(path).write_text(json.dumps(report, indent=1, sort_keys=True))
    return value


def rel(a: Any, b: Any) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ models and data


def _linear() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_TRAIN + N_TEST, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 1, generator=g, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(N_TRAIN + N_TEST, 1, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(6, 1)).double()  # a child module, for BlockMode.LAYER_WISE
    with torch.no_grad():
        model[0].weight.copy_(w.T + 0.05)
        model[0].bias.fill_(0.1)
    return {"model": model, "loss": torch.nn.functional.mse_loss, "x": x, "y": y}


def _mlp() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_TEST, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    _train(model, torch.nn.functional.cross_entropy, x[:N_TRAIN], y[:N_TRAIN])
    return {"model": model, "loss": torch.nn.functional.cross_entropy, "x": x, "y": y}


def _cnn() -> dict[str, Any]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N_TRAIN + N_TEST, 1, 5, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0, 2, 2] > 0).long() + (x[:, 0].mean((1, 2)) > 0.2).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()
    _train(model, torch.nn.functional.cross_entropy, x[:N_TRAIN], y[:N_TRAIN])
    return {"model": model, "loss": torch.nn.functional.cross_entropy, "x": x, "y": y}


def _train(model: nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    model.eval()


PROBLEMS = {"linear": _linear, "mlp": _mlp, "cnn": _cnn}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request: pytest.FixtureRequest) -> dict[str, Any]:
    p = PROBLEMS[request.param]()
    p["name"] = request.param
    p["train"] = (p["x"][:N_TRAIN], p["y"][:N_TRAIN])
    p["test"] = (p["x"][N_TRAIN:], p["y"][N_TRAIN:])
    p["loader"] = DataLoader(TensorDataset(*p["train"]), batch_size=BATCH)
    p["full_loader"] = DataLoader(TensorDataset(*p["train"]), batch_size=N_TRAIN)
    return p


@pytest.fixture(scope="module")
def mlp() -> dict[str, Any]:
    p = _mlp()
    p["train"] = (p["x"][:N_TRAIN], p["y"][:N_TRAIN])
    p["test"] = (p["x"][N_TRAIN:], p["y"][N_TRAIN:])
    p["loader"] = DataLoader(TensorDataset(*p["train"]), batch_size=BATCH)
    p["full_loader"] = DataLoader(TensorDataset(*p["train"]), batch_size=N_TRAIN)
    return p


def custom_blocks(model: nn.Module) -> OrderedDict[str, list[str]]:
    """Two blocks in reverse parameter order; parameters after the third are left out."""
    names = [n for n, _ in model.named_parameters()]
    if len(names) == 2:
        return OrderedDict(bias=[names[1]], weight=[names[0]])
    return OrderedDict(third=[names[2]], first_two=names[:2])


def structures(model: nn.Module) -> dict[str, Any]:
    return {
        "full": (BlockMode.FULL, PBlockMode.FULL),
        "layer_wise": (BlockMode.LAYER_WISE, PBlockMode.LAYER_WISE),
        "parameter_wise": (BlockMode.PARAMETER_WISE, PBlockMode.PARAMETER_WISE),
        "custom": (custom_blocks(model), custom_blocks(model)),
    }


def pydvl_values(pm: Any, p: dict[str, Any], one_row: bool = False) -> np.ndarray:
    """pyDVL's test x train influences (factors one test point at a time if ``one_row``)."""
    xt, yt = p["test"]
    if not one_row:
        return pm.influences(xt, yt, *p["train"], mode=InfluenceMode.Up).detach().numpy()
    factors = torch.cat(
        [pm.influence_factors(xt[i : i + 1], yt[i : i + 1]) for i in range(len(xt))]
    )
    return pm.influences_from_factors(factors, *p["train"], mode=InfluenceMode.Up).detach().numpy()


def our_values(model: Any, p: dict[str, Any]) -> np.ndarray:
    return model.influences(*p["test"], *p["train"]).detach().numpy()


def check_same(name: str, om: Any, pm: Any, p: dict[str, Any], one_row: bool = False) -> float:
    """Record ours vs pyDVL's relative difference and assert it is at most TOL."""
    d = record(name, rel(our_values(om, p), pydvl_values(pm, p, one_row)))
    assert d <= TOL
    return d


@contextmanager
def pydvl_point_averaging_fixed() -> Iterator[None]:
    """pyDVL's Gauss-Newton/DataInf operators with ChunkAveraging (equal batches: the mean)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(pydvl_operator, "PointAveraging", ChunkAveraging)
    try:
        yield
    finally:
        mp.undo()


@contextmanager
def shared_randn() -> Iterator[list[torch.Tensor]]:
    """Record every ``torch.randn`` draw (pyDVL's sketch) ..."""
    draws: list[torch.Tensor] = []
    original = torch.randn
    mp = pytest.MonkeyPatch()

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = original(*args, **kwargs)
        draws.append(t.clone())
        return t

    mp.setattr(torch, "randn", recording)
    try:
        yield draws
    finally:
        mp.undo()


@contextmanager
def replayed_randn(draws: list[torch.Tensor]) -> Iterator[None]:
    """... and replay them, in order, to ours (same shapes asserted)."""
    queue = list(draws)
    mp = pytest.MonkeyPatch()

    def replay(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = queue.pop(0)
        assert tuple(t.shape) == tuple(int(a) for a in args), (t.shape, args)
        return t.clone()

    mp.setattr(torch, "randn", replay)
    try:
        yield
    finally:
        mp.undo()
    assert not queue, "ours drew fewer sketches than pyDVL"


# ------------------------------------------------------------------ Direct


@pytest.mark.parametrize("structure", ["full", "layer_wise", "parameter_wise", "custom"])
def test_direct(problem: dict[str, Any], structure: str) -> None:
    ob, pb = structures(problem["model"])[structure]
    m, loss = problem["model"], problem["loss"]
    pm = pydvl_models.DirectInfluence(m, loss, 0.1, block_structure=pb).fit(problem["loader"])
    om = ours.DirectInfluence(m, loss, 0.1, block_structure=ob).fit(problem["loader"])
    check_same(f"direct {structure} {problem['name']}", om, pm, problem)


def test_direct_regularization_dict(problem: dict[str, Any]) -> None:
    m, loss = problem["model"], problem["loss"]
    names = [n for n, _ in m.named_parameters()]
    reg = {names[0]: 0.05, names[1]: 0.2}  # the other blocks: no regularization (pyDVL: None)
    if problem["name"] != "linear":
        reg[names[2]] = 0.3
    # pyDVL 0.10 inverts its subset check: one key that is not a block name takes its working path
    pm = pydvl_models.DirectInfluence(
        m, loss, {**reg, "not a block": None}, block_structure=PBlockMode.PARAMETER_WISE
    ).fit(problem["loader"])
    om = ours.DirectInfluence(m, loss, reg, block_structure=BlockMode.PARAMETER_WISE)
    om.fit(problem["loader"])
    check_same(f"direct regularization dict {problem['name']}", om, pm, problem)


# ------------------------------------------------------------------ CG


@pytest.mark.parametrize("structure", ["full", "layer_wise", "parameter_wise", "custom"])
def test_cg_default_arguments(problem: dict[str, Any], structure: str) -> None:
    """pyDVL's defaults (rtol=1e-4, atol=1e-6, maxiter=None) mean the same here."""
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    om = ours.CgInfluence(m, loss, 0.1, block_structure=ob).fit(problem["loader"])
    got = our_values(om, problem)
    # pyDVL's one-at-a-time CG solves at most n_params right-hand sides per call (see
    # test_pydvl_cg_rows_bug): one test point per call
    pm = pydvl_models.CgInfluence(m, loss, 0.1, block_structure=pb).fit(problem["loader"])
    d1 = record(f"cg defaults {structure} {name}", rel(got, pydvl_values(pm, problem, True)))
    pm = pydvl_models.CgInfluence(m, loss, 0.1, solve_simultaneously=True, block_structure=pb)
    pm.fit(problem["loader"])
    d2 = record(f"cg defaults simultaneous {structure} {name}", rel(got, pydvl_values(pm, problem)))
    exact = pydvl_models.DirectInfluence(m, loss, 0.1, block_structure=pb).fit(problem["loader"])
    d3 = record(
        f"cg defaults vs pyDVL direct {structure} {name}", rel(got, pydvl_values(exact, problem))
    )
    assert max(d1, d2, d3) <= TOL


@pytest.mark.parametrize("simultaneous", [False, True])
@pytest.mark.parametrize("kind", ["jacobi", "nystroem"])
def test_cg_preconditioner(problem: dict[str, Any], kind: str, simultaneous: bool) -> None:
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    make = {
        "jacobi": (ours.JacobiPreconditioner, PJacobi),  # pyDVL's default: 1 sample
        "nystroem": (partial(ours.NystroemPreconditioner, 5), partial(PNystroemPre, 5)),
    }[kind]
    torch.manual_seed(0)
    om = ours.CgInfluence(m, loss, 0.1, preconditioner=make[0](), solve_simultaneously=simultaneous)
    om.fit(problem["loader"])
    torch.manual_seed(0)
    pm = pydvl_models.CgInfluence(
        m, loss, 0.1, preconditioner=make[1](), solve_simultaneously=simultaneous
    ).fit(problem["loader"])
    label = f"cg {kind} preconditioner simultaneous={simultaneous} {name}"
    check_same(label, om, pm, problem, one_row=not simultaneous)


@pytest.mark.parametrize("structure", ["full", "layer_wise"])
def test_cg_gauss_newton(problem: dict[str, Any], structure: str) -> None:
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    om = ours.CgInfluence(m, loss, 0.1, block_structure=ob, second_order_mode=GN)
    om.fit(problem["loader"])
    # pyDVL's Gauss-Newton operator is right for one vector (as a row) at a time: block CG,
    # one test point per call (see test_pydvl_point_averaging_bug)
    pm = pydvl_models.CgInfluence(
        m, loss, 0.1, solve_simultaneously=True, block_structure=pb, second_order_mode=P_GN
    ).fit(problem["loader"])
    check_same(f"cg gauss-newton {structure} {name}", om, pm, problem, one_row=True)


def test_direct_gauss_newton(problem: dict[str, Any]) -> None:
    """pyDVL's Direct Gauss-Newton is wrong (test_pydvl_gauss_newton_bug): vs its tight CG."""
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    om = ours.DirectInfluence(m, loss, 0.1, second_order_mode=GN).fit(problem["loader"])
    pm = pydvl_models.CgInfluence(
        m, loss, 0.1, rtol=1e-7, atol=1e-9, solve_simultaneously=True, second_order_mode=P_GN
    ).fit(problem["loader"])
    check_same(f"direct gauss-newton vs pyDVL cg {name}", om, pm, problem, one_row=True)


def test_ragged_batches(mlp: dict[str, Any]) -> None:
    """pyDVL's CG weights batches equally; hessian_average="batch" reproduces it."""
    loader = DataLoader(TensorDataset(*mlp["train"]), batch_size=12)  # 12, 12, 12, 4
    m, loss = mlp["model"], mlp["loss"]
    pm = pydvl_models.CgInfluence(m, loss, 0.1, solve_simultaneously=True).fit(loader)
    want = pydvl_values(pm, mlp)
    batch = ours.CgInfluence(m, loss, 0.1, hessian_average="batch").fit(loader)
    sample = ours.CgInfluence(m, loss, 0.1).fit(loader)
    d = record("cg ragged batches hessian_average=batch mlp", rel(our_values(batch, mlp), want))
    assert d <= TOL
    assert rel(our_values(sample, mlp), want) > 1e-3  # our default: the mean over samples


# ------------------------------------------------------------------ LiSSA


def _scale(p: dict[str, Any], mode: SecondOrderMode) -> float:
    """1.2 times the largest eigenvalue of the curvature plus regularization."""
    d = ours.DirectInfluence(p["model"], p["loss"], 0.1, second_order_mode=mode).fit(p["train"])
    assert d.hessian_ is not None
    return 1.2 * float(torch.linalg.eigvalsh(d.hessian_)[-1] + 0.1)


@pytest.mark.parametrize(
    ("structure", "mode"),
    [("full", "hessian"), ("layer_wise", "hessian"), ("full", "gauss_newton")],
)
def test_lissa(problem: dict[str, Any], structure: str, mode: str) -> None:
    """Full-batch loader: pyDVL's stochastic LiSSA is then deterministic; both run to 1e-11."""
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    scale = _scale(problem, SecondOrderMode(mode))
    kwargs = {"maxiter": 20000, "scale": scale, "rtol": 1e-11}
    om = ours.LissaInfluence(
        m, loss, 0.1, block_structure=ob, second_order_mode=SecondOrderMode(mode), **kwargs
    )
    om.fit(problem["full_loader"])
    pm = pydvl_models.LissaInfluence(
        m, loss, 0.1, block_structure=pb, second_order_mode=PSecondOrderMode(mode), **kwargs
    )
    pm.fit(problem["full_loader"])
    check_same(f"lissa {mode} {structure} {name}", om, pm, problem)


# ------------------------------------------------------------------ Arnoldi


@pytest.mark.parametrize("woodbury", [False, True])
@pytest.mark.parametrize(
    ("structure", "mode"),
    [("full", "hessian"), ("layer_wise", "hessian"), ("full", "gauss_newton")],
)
def test_arnoldi(problem: dict[str, Any], structure: str, mode: str, woodbury: bool) -> None:
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    rank = 3 if name == "linear" else 5
    om = ours.ArnoldiInfluence(
        m,
        loss,
        0.1,
        rank=rank,
        block_structure=ob,
        second_order_mode=SecondOrderMode(mode),
        use_woodbury=woodbury,
    )
    om.fit(problem["loader"])
    with pydvl_point_averaging_fixed():  # pyDVL's Gauss-Newton products, with the mean fixed
        pm = pydvl_models.ArnoldiInfluence(
            m,
            loss,
            0.1,
            rank=rank,
            block_structure=pb,
            second_order_mode=PSecondOrderMode(mode),
            use_woodbury=woodbury,
        )
        pm.fit(problem["loader"])
    check_same(f"arnoldi {mode} {structure} woodbury={woodbury} {name}", om, pm, problem)


# ------------------------------------------------------------------ Nystroem


@pytest.mark.parametrize(
    ("structure", "mode"),
    [
        ("full", "hessian"),
        ("layer_wise", "hessian"),
        ("parameter_wise", "hessian"),
        ("custom", "hessian"),
        ("full", "gauss_newton"),
    ],
)
def test_nystroem_same_sketch(problem: dict[str, Any], structure: str, mode: str) -> None:
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    with shared_randn() as draws, pydvl_point_averaging_fixed():
        pm = pydvl_models.NystroemSketchInfluence(
            m, loss, 0.1, rank=4, block_structure=pb, second_order_mode=PSecondOrderMode(mode)
        )
        pm.fit(problem["loader"])
    assert len(draws) == len(pm.block_names)
    with replayed_randn(draws):
        om = ours.NystroemSketchInfluence(
            m, loss, 0.1, rank=4, block_structure=ob, second_order_mode=SecondOrderMode(mode)
        )
        om.fit(problem["loader"])
    check_same(f"nystroem {mode} {structure} {name}", om, pm, problem)


# ------------------------------------------------------------------ DataInf


@pytest.mark.parametrize("structure", ["full", "layer_wise", "parameter_wise", "custom"])
def test_inverse_harmonic_mean(problem: dict[str, Any], structure: str) -> None:
    ob, pb = structures(problem["model"])[structure]
    m, loss, name = problem["model"], problem["loss"], problem["name"]
    om = ours.InverseHarmonicMeanInfluence(m, loss, 0.1, block_structure=ob).fit(problem["loader"])
    pm = pydvl_models.InverseHarmonicMeanInfluence(m, loss, 0.1, block_structure=pb)
    pm.fit(problem["loader"])
    check_same(f"datainf {structure} {name}", om, pm, problem, one_row=True)


# ------------------------------------------------------------------ linear model: closed form


def _linear_closed_form(p: dict[str, Any]) -> dict[str, np.ndarray]:
    """Gradients, Hessian and Gauss-Newton matrix of single-output least squares, in numpy."""
    lin = p["model"][0]
    theta = np.concatenate([lin.weight.detach().numpy().ravel(), lin.bias.detach().numpy()])

    def aug(x: torch.Tensor) -> np.ndarray:
        return np.hstack([x.numpy(), np.ones((len(x), 1))])

    xa, xt = aug(p["train"][0]), aug(p["test"][0])
    g_train = 2 * (xa @ theta - p["train"][1].numpy()[:, 0])[:, None] * xa  # d/dtheta (r^2)
    g_test = 2 * (xt @ theta - p["test"][1].numpy()[:, 0])[:, None] * xt
    return {
        "g_train": g_train,
        "g_test": g_test,
        "H": 2 * xa.T @ xa / len(xa),
        "GN": g_train.T @ g_train / len(xa),
    }


@pytest.fixture(scope="module")
def linear() -> dict[str, Any]:
    p = _linear()
    p["name"] = "linear"
    p["train"] = (p["x"][:N_TRAIN], p["y"][:N_TRAIN])
    p["test"] = (p["x"][N_TRAIN:], p["y"][N_TRAIN:])
    p["loader"] = DataLoader(TensorDataset(*p["train"]), batch_size=BATCH)
    p.update(_linear_closed_form(p))
    return p


@pytest.mark.parametrize(
    ("mode", "blocks"),
    [("hessian", "full"), ("hessian", "parameter_wise"), ("gauss_newton", "full")],
)
def test_linear_closed_form(linear: dict[str, Any], mode: str, blocks: str) -> None:
    """Ours and pyDVL against the numpy closed form (block-diagonal for parameter-wise)."""
    c = linear["GN"] if mode == "gauss_newton" else linear["H"].copy()
    if blocks == "parameter_wise":  # weight (6) and bias (1): drop the coupling
        c[:6, 6:] = 0
        c[6:, :6] = 0
    want = linear["g_test"] @ np.linalg.solve(c + 0.1 * np.eye(7), linear["g_train"].T)
    ob, pb = structures(linear["model"])[blocks]
    m, loss = linear["model"], linear["loss"]
    om = ours.DirectInfluence(
        m, loss, 0.1, block_structure=ob, second_order_mode=SecondOrderMode(mode)
    )
    om.fit(linear["loader"])
    d = record(f"direct {mode} {blocks} linear vs closed form", rel(our_values(om, linear), want))
    assert d <= 1e-12
    # pyDVL: Direct for the Hessian; for Gauss-Newton its tight block CG, one point at a time
    if mode == "hessian":
        pm = pydvl_models.DirectInfluence(m, loss, 0.1, block_structure=pb)
    else:
        pm = pydvl_models.CgInfluence(
            m, loss, 0.1, 1e-7, 1e-9, solve_simultaneously=True, second_order_mode=P_GN
        )
    pm.fit(linear["loader"])
    d = record(
        f"pyDVL {mode} {blocks} linear vs closed form",
        rel(pydvl_values(pm, linear, mode != "hessian"), want),
    )
    assert d <= 1e-9


def test_linear_datainf_closed_form(linear: dict[str, Any]) -> None:
    g = linear["g_train"]
    inv_mean = sum(np.linalg.inv(np.outer(gi, gi) + 0.1 * np.eye(7)) for gi in g) / len(g)
    want = linear["g_test"] @ inv_mean @ g.T
    m, loss = linear["model"], linear["loss"]
    om = ours.InverseHarmonicMeanInfluence(m, loss, 0.1).fit(linear["loader"])
    d = record("datainf linear vs closed form", rel(our_values(om, linear), want))
    assert d <= 1e-12
    pm = pydvl_models.InverseHarmonicMeanInfluence(m, loss, 0.1).fit(linear["loader"])
    assert rel(pydvl_values(pm, linear, one_row=True), want) <= 1e-12


# ------------------------------------------------------------------ pyDVL 0.10's bugs, shown


def test_pydvl_point_averaging_bug(linear: dict[str, Any]) -> None:
    """pyDVL's DataInf (and Gauss-Newton) operators divide by the number of right-hand sides."""
    m, loss = linear["model"], linear["loss"]
    pm = pydvl_models.InverseHarmonicMeanInfluence(m, loss, 0.1).fit(linear["loader"])
    one_row = pydvl_values(pm, linear, one_row=True)
    d = record(
        "pyDVL bug: datainf many rows vs one row at a time", rel(pydvl_values(pm, linear), one_row)
    )
    assert d > 0.1


def test_pydvl_gauss_newton_bug(linear: dict[str, Any]) -> None:
    """pyDVL's gauss_newton() divides by (n_batches - 1) * n_params, not by N."""
    from pydvl.influence.torch.functional import gauss_newton

    got = gauss_newton(linear["model"], linear["loss"], linear["loader"]).numpy()
    d = record("pyDVL bug: gauss_newton() vs closed form", rel(got, linear["GN"]))
    np.testing.assert_allclose(got, linear["GN"] * N_TRAIN / (7 * (N_TRAIN // BATCH - 1)))
    assert d > 0.1
    om = ours.DirectInfluence(linear["model"], linear["loss"], 0.1, second_order_mode=GN)
    om.fit(linear["loader"])
    assert rel(om.hessian_, linear["GN"]) <= 1e-13


def test_pydvl_cg_rows_bug(linear: dict[str, Any]) -> None:
    """pyDVL's one-at-a-time CG returns zeros for right-hand sides beyond n_params."""
    m, loss = linear["model"], linear["loss"]
    pm = pydvl_models.CgInfluence(m, loss, 0.1).fit(linear["loader"])
    factors = pm.influence_factors(*linear["test"]).numpy()  # 8 test points, 7 parameters
    assert np.abs(factors[7]).max() == 0 and np.abs(factors[:7]).min(axis=1).max() > 0


def test_pydvl_regularization_dict_bug(linear: dict[str, Any]) -> None:
    """pyDVL refuses a dict whose keys are block names (its subset check is inverted)."""
    m, loss = linear["model"], linear["loss"]
    reg = {"0.weight": 0.1, "0.bias": 0.2}
    with pytest.raises(ValueError, match="must match a subset"):
        pydvl_models.DirectInfluence(m, loss, reg, block_structure=PBlockMode.PARAMETER_WISE)
    om = ours.DirectInfluence(m, loss, reg, block_structure=BlockMode.PARAMETER_WISE)
    assert om.regularization == reg


# ------------------------------------------------------------------ pyDVL's own linear CG cases


def _pydvl_linear_case(seed: int) -> dict[str, Any]:
    """pyDVL's test_influence_linear_model setup: a (4, 20) model, condition number 2, 200/20
    points, regularization 0.1, batches of 40 (ported from its tests/influence/conftest.py)."""
    from pydvl.utils import random_matrix_with_condition_number

    rng = np.random.default_rng(seed)  # pyDVL draws from np.random's global state likewise
    out_dim, in_dim = 4, 20
    a = random_matrix_with_condition_number(max(in_dim, out_dim), 2.0, seed=seed)[:out_dim, :in_dim]
    b = rng.uniform(size=[out_dim])
    x_train = rng.uniform(size=[200, in_dim])
    y_train = rng.normal(x_train @ a.T + b, 0.01)
    x_test = rng.uniform(size=[20, in_dim])
    y_test = rng.normal(x_test @ a.T + b, 0.01)
    model = nn.Linear(in_dim, out_dim).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(a))
        model.bias.copy_(torch.as_tensor(b))

    def grads(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # pyDVL's linear_derivative_analytical
        r = x @ a.T + b - y
        return 2 * np.hstack([(r[:, :, None] * x[:, None, :]).reshape(len(x), -1), r]) / out_dim

    xa = np.hstack([x_train, np.ones((200, 1))])
    h = 2 * np.kron(np.eye(out_dim), xa.T @ xa / 200) / out_dim  # (W rows + bias) interleaved
    order = np.concatenate(
        [np.arange(k * 21, k * 21 + 20) for k in range(out_dim)] + [np.arange(20, 84, 21)]
    )
    h = h[np.ix_(order, order)] + 0.1 * np.eye(84)
    factors = np.linalg.solve(h, grads(x_test, y_test).T).T
    return {
        "model": model,
        "train": (torch.as_tensor(x_train), torch.as_tensor(y_train)),
        "test": (torch.as_tensor(x_test), torch.as_tensor(y_test)),
        "analytical": factors @ grads(x_train, y_train).T,
        "H": h - 0.1 * np.eye(84),
    }


def _upper_quantile_equivalence(approx: np.ndarray, exact: np.ndarray, rtol: float) -> bool:
    """pyDVL's check: values above the 0.9 quantile of |approx| agree to rtol."""
    mask = np.abs(approx) > np.quantile(np.abs(approx), 0.9)
    return bool(np.allclose(approx[mask], exact[mask], rtol=rtol))


@pytest.mark.parametrize(("case", "rtol"), [("cg", 1e-1), ("block-cg", 1e-4), ("direct", 1e-4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pydvl_linear_cg_cases(case: str, rtol: float, seed: int) -> None:
    """pyDVL's linear-model cases with default arguments pass its checks, at least as accurately."""
    p = _pydvl_linear_case(seed)
    loader = DataLoader(TensorDataset(*p["train"]), batch_size=40)
    loss = torch.nn.functional.mse_loss
    kwargs: dict[str, Any] = {}
    if case == "block-cg":
        kwargs = {"solve_simultaneously": True}
    cls = {"cg": "CgInfluence", "block-cg": "CgInfluence", "direct": "DirectInfluence"}[case]
    torch.manual_seed(seed)
    om_kwargs = (
        dict(kwargs, preconditioner=ours.NystroemPreconditioner(10))
        if case == "block-cg"
        else kwargs
    )
    pm_kwargs = dict(kwargs, preconditioner=PNystroemPre(10)) if case == "block-cg" else kwargs
    om = getattr(ours, cls)(p["model"], loss, regularization=0.1, **om_kwargs).fit(loader)
    pm = getattr(pydvl_models, cls)(p["model"], loss, regularization=0.1, **pm_kwargs).fit(loader)
    ours_v = om.influences(*p["test"], *p["train"]).numpy()
    pydvl_v = pm.influences(*p["test"], *p["train"], mode=InfluenceMode.Up).numpy()
    assert _upper_quantile_equivalence(ours_v, p["analytical"], rtol)
    assert _upper_quantile_equivalence(pydvl_v, p["analytical"], rtol)
    name = f"pyDVL linear case {case} seed {seed}"
    err_ours = record(f"{name}: ours vs analytical", rel(ours_v, p["analytical"]))
    record(f"{name}: pyDVL vs analytical", rel(pydvl_v, p["analytical"]))
    # the stopping rule ||r|| < 1e-8 ||g|| (pyDVL's, at its defaults) gives ~1e-9..1e-8 relative
    # error; pyDVL's block CG often stops later than its rule asks (1e-14 here): its shared
    # Krylov space grows by 20 directions per iteration
    assert err_ours <= 1e-7


def test_arnoldi_repeated_eigenvalues() -> None:
    """pyDVL's 4-output linear case: every Hessian eigenvalue 4 times; rank 8 = 2 eigenspaces."""
    p = _pydvl_linear_case(0)
    loader = DataLoader(TensorDataset(*p["train"]), batch_size=40)
    loss = torch.nn.functional.mse_loss
    evals, evecs = np.linalg.eigh(p["H"])
    top = np.argsort(-np.abs(evals))[:8]
    assert np.allclose(evals[top][:4], evals[top][0]) and np.allclose(evals[top][4:], evals[top][4])
    g_test = ours.DirectInfluence(p["model"], loss).fit(loader).per_sample_grads(*p["test"]).numpy()
    g_train = (
        ours.DirectInfluence(p["model"], loss).fit(loader).per_sample_grads(*p["train"]).numpy()
    )
    v, mu = evecs[:, top], evals[top]
    want = (g_test @ v / (mu + 0.1)) @ (g_train @ v).T
    om = ours.ArnoldiInfluence(p["model"], loss, 0.1, rank=8).fit(loader)
    d = record(
        "arnoldi repeated eigenvalues rank 8: ours vs exact truncation",
        rel(our_values(om, p), want),
    )
    pm = pydvl_models.ArnoldiInfluence(p["model"], loss, 0.1, rank=8).fit(loader)
    dp = record(
        "arnoldi repeated eigenvalues rank 8: pyDVL vs exact truncation",
        rel(pydvl_values(pm, p), want),
    )
    assert d <= TOL
    assert dp > 1e-3  # pyDVL's eigsh misses copies: a wrong truncation


# ------------------------------------------------------------------ through an InfluenceArray


def test_store_matches_pydvl(mlp: dict[str, Any], tmp_path: Path) -> None:
    m, loss = mlp["model"], mlp["loss"]
    with shared_randn() as draws:
        pm = pydvl_models.NystroemSketchInfluence(
            m, loss, 0.1, rank=6, block_structure=PBlockMode.LAYER_WISE
        )
        pm.fit(mlp["loader"])
    with replayed_randn(draws):
        om = ours.NystroemSketchInfluence(
            m, loss, 0.1, rank=6, block_structure=BlockMode.LAYER_WISE
        )
        om.fit(mlp["loader"])
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        om,
        test=mlp["test"],
        train=mlp["loader"],
        block_shape=(3, 7),
        dtype="float64",
    )
    d = record(
        "nystroem layer_wise mlp: store vs pyDVL", rel(np.asarray(arr), pydvl_values(pm, mlp))
    )
    assert d <= TOL
    again = ia.open(tmp_path / "s", om, test=mlp["test"], train=mlp["loader"])
    np.testing.assert_array_equal(again[2:5, ::3], np.asarray(arr)[2:5, ::3])
