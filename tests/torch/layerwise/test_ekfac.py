"""EkfacInfluence against K-FAC / EK-FAC built by brute force here, in float64.

The reference runs the model one sample at a time, layer by layer, records each layer's input
(unfolded with ``F.unfold`` for convolutions) and the gradient of the curvature objective with
respect to its output, and builds each layer's curvature as an explicit matrix: K-FAC
``kron(G, A) / T``, or EK-FAC ``Q diag(Lambda) Q^T`` with ``Q = kron(Q_G, Q_A)`` and
``Lambda = mean_i (Q^T vec(M_i))**2``. Influence is ``sum_l g_l^T (H_l + lambda*Id)^-1 g_l'``
with per-sample loss gradients from ``torch.func``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import CE, REG, cnn_data, small_cnn, trained_cnn
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from infl_array.torch import EkfacInfluence, MemoryBudgetError
from infl_array.torch.layerwise import kronecker
from infl_array.torch.layerwise.kronecker import KroneckerCurvature, eigh

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = cnn_data(40, 0), cnn_data(7, 1)
    return {"model": trained_cnn(small_cnn(), *train), "train": train, "test": test}


# --------------------------------------------------------------------------- reference
def layer_modules(model: nn.Sequential) -> list[nn.Module]:
    return [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]


def reference_grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per layer: per-sample loss gradients ``(n, d_out * width_in)`` by torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return CE(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    out = []
    for idx, m in enumerate(model):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = g[f"{idx}.weight"].reshape(x.shape[0], m.weight.shape[0], -1)
            if m.bias is not None:
                w = torch.cat([w, g[f"{idx}.bias"][..., None]], dim=-1)
            out.append(w.flatten(1))
    return out


def per_position(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, fisher: str):
    """Per layer, per sample: activations ``(T, width_in)`` and curvature grads ``(T, d_out)``."""
    result: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layer_modules(model)]
    for i in range(x.shape[0]):
        h, inputs, outputs = x[i : i + 1], [], []
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                inputs.append(h.detach())
                h = m(h)
                outputs.append(h)
            else:
                h = m(h)
        if fisher == "empirical":
            obj = CE(h, y[i : i + 1])
        else:
            p = torch.softmax(h, dim=1)
            obj = (torch.log(p) * p.detach().sqrt()).sum()
        grads = torch.autograd.grad(obj, outputs)
        for k, (m, a, g) in enumerate(zip(layer_modules(model), inputs, grads, strict=True)):
            if isinstance(m, nn.Conv2d):
                a = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)[0].T
                g = g[0].reshape(m.out_channels, -1).T
            if m.bias is not None:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
            result[k].append((a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])))
    return result


def reference_curvature(samples: list[tuple[torch.Tensor, torch.Tensor]], correct: bool):
    """Explicit K-FAC or EK-FAC matrix of one layer from per-sample (a, g) positions."""
    n = len(samples)
    a_cov = sum(a.T @ a for a, _ in samples) / n
    g_cov = sum(g.T @ g for _, g in samples) / n
    positions = samples[0][0].shape[0]
    if not correct:
        return torch.kron(g_cov, a_cov) / positions
    _, q_a = torch.linalg.eigh(a_cov)
    _, q_g = torch.linalg.eigh(g_cov)
    q = torch.kron(q_g, q_a)
    vecs = torch.stack([(g.T @ a).flatten() for a, g in samples])  # per-sample gradients
    lam = ((vecs @ q) ** 2).mean(0)
    return q @ torch.diag(lam) @ q.T


def reference_influence(model, train, test, fisher: str, correct: bool, reg: float = REG):
    curv = [reference_curvature(s, correct) for s in per_position(model, *train, fisher)]
    total = torch.zeros(test[0].shape[0], train[0].shape[0], dtype=torch.float64)
    for h, gt, gr in zip(
        curv, reference_grads(model, *test), reference_grads(model, *train), strict=True
    ):
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        total += torch.linalg.solve(h + reg * eye, gt.T).T @ gr.T
    return total


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("update_diagonal", [False, True])
@pytest.mark.parametrize("fisher_type", ["empirical", "pydvl"])
def test_matches_brute_force(setup: dict[str, Any], fisher_type: str, update_diagonal: bool):
    model, train, test = setup["model"], setup["train"], setup["test"]
    infl = EkfacInfluence(
        model, CE, REG, update_diagonal=update_diagonal, fisher_type=fisher_type, batch_size=16
    ).fit(train)
    expected = reference_influence(model, train, test, fisher_type, update_diagonal)
    got = infl.influences(*test, *train)
    assert got.dtype == torch.float64 and got.shape == (7, 40)
    assert rel(got, expected) < 1e-10
    # self-influence: the diagonal of the train x train matrix
    x, y = train
    diag = infl.factor_diagonal(infl.test_factors(x, y), infl.train_factors(x, y))
    torch.testing.assert_close(diag, infl.influences(x, y, x, y).diagonal(), rtol=1e-10, atol=0)


def test_factor_layout(setup: dict[str, Any]) -> None:
    model, train, test = setup["model"], setup["train"], setup["test"]
    infl = EkfacInfluence(model, regularization=REG).fit(train)
    # conv layers (16 and 4 positions) are full; the Linear layers (one position) compact
    assert infl.test_factor_width == 3 * 19 + 2 * 12 + 4 * 9 + 3 * 5
    assert infl.train_factor_width == 3 * 19 + 2 * 12 + (4 + 9) + (3 + 5)
    train_f = infl.train_factors(*train)
    assert train_f.shape == (40, infl.train_factor_width)
    # compact columns hold Q_G^T g then Q_A^T (a, 1): rotated back, their outer product is
    # the gradient
    grads = reference_grads(model, *train)
    c = infl.curvature[2]
    assert c.q_g is not None and c.q_a is not None
    g, a = train_f[:, 81:85] @ c.q_g.T, train_f[:, 85:94] @ c.q_a.T
    torch.testing.assert_close((g[:, :, None] * a[:, None]).flatten(1), grads[2])
    torch.testing.assert_close(train_f[:, :57], grads[0])
    # test factors are the preconditioned gradients, layer after layer; a compact layer's in
    # its eigenbasis
    test_f = infl.test_factors(*test)
    rotated = test_f[:, 81:117].reshape(-1, 4, 9)
    plain_test = test_f.clone()
    plain_test[:, 81:117] = (c.q_g @ rotated @ c.q_a.T).flatten(1)
    c = infl.curvature[3]
    assert c.q_g is not None and c.q_a is not None
    rotated = test_f[:, 117:].reshape(-1, 3, 5)
    plain_test[:, 117:] = (c.q_g @ rotated @ c.q_a.T).flatten(1)
    plain = torch.cat(grads, dim=1)
    expected = plain_test @ plain.T
    torch.testing.assert_close(expected, infl.factor_product(test_f, train_f))
    # stored factors may come back as float32: the product promotes
    mixed = infl.factor_product(test_f, train_f.float())
    assert mixed.dtype == torch.float64 and rel(mixed, expected) < 1e-6


@pytest.mark.parametrize("budget", [10**8, 400, 192])
def test_compact_product_both_orientations_in_chunks(budget: int) -> None:
    # Linear(3, 10): d_out 10 > width_in 4 (contracts over g); Linear(10, 3): width_in 11 >
    # d_out 3 (contracts over a); small budgets split the train rows into chunks of 1-2
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    train = (x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())
    test = (train[0][:6], train[1][:6])
    infl = EkfacInfluence(
        model, CE, REG, update_diagonal=True, fisher_type="empirical", memory_budget=10**8
    ).fit(train)
    assert infl.train_factor_width == (10 + 4) + (3 + 11)
    test_f, train_f = infl.test_factors(*test), infl.train_factors(*train)
    curvature = infl.budget.lasting_bytes()  # the budget holds the fitted curvature
    infl.memory_budget = curvature + budget
    expected = reference_influence(model, train, test, "empirical", True)
    assert rel(infl.factor_product(test_f, train_f), expected) < 1e-10
    # one train row of layer 0: 6 test rows x 4 (shorter side)
    infl.memory_budget = curvature + 6 * 4 * 8 - 1
    with pytest.raises(MemoryBudgetError, match=r"one train row of layer '0' against 6 test rows"):
        infl.factor_product(test_f, train_f)


def test_kronecker_inverse_matches_explicit() -> None:
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(9, 4, 5, generator=gen, dtype=torch.float64)  # 9 samples, 4 positions
    grads = torch.randn(9, 4, 3, generator=gen, dtype=torch.float64)
    m = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    for correct in (False, True):
        curv = KroneckerCurvature(3, 5, acts, "x")
        curv.add_covariances(acts[:4], grads[:4])
        curv.add_covariances(acts[4:], grads[4:])
        curv.eigendecompose()
        if correct:
            curv.add_eigenvalue_moments(acts[:5], grads[:5], budget=10_000)
            curv.add_eigenvalue_moments(acts[5:], grads[5:], budget=500)  # in chunks of 2 samples
            curv.finish_correction()
        samples = list(zip(acts, grads, strict=True))
        h = reference_curvature(samples, correct)
        explicit = torch.linalg.solve(h + 0.3 * torch.eye(15, dtype=h.dtype), m.flatten(1).T).T
        torch.testing.assert_close(curv.solve(m, 0.3).flatten(1), explicit)


def test_one_position_fast_path_matches_general() -> None:
    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(8, 1, 4, generator=gen, dtype=torch.float64)
    grads = torch.randn(8, 1, 3, generator=gen, dtype=torch.float64)
    fast, general = KroneckerCurvature(3, 4, acts), KroneckerCurvature(3, 4, acts)
    for c in (fast, general):
        c.add_covariances(acts, grads)
        c.eigendecompose()
    fast.add_eigenvalue_moments(acts, grads, budget=1 << 20)
    # the general path (several positions), with a zero second position
    pad = torch.cat([acts, torch.zeros_like(acts)], dim=1)
    general.add_eigenvalue_moments(pad, torch.cat([grads, grads], dim=1), budget=1 << 20)
    fast.finish_correction()
    general.finish_correction()
    torch.testing.assert_close(fast.eigenvalues, general.eigenvalues)


def test_batches_and_data_forms_do_not_change_values(setup: dict[str, Any]) -> None:
    model, train, test = setup["model"], setup["train"], setup["test"]
    one = EkfacInfluence(model, CE, REG, update_diagonal=True).fit(train)
    loader = DataLoader(TensorDataset(*train), batch_size=7)  # ragged last batch
    ragged = EkfacInfluence(model, CE, REG, update_diagonal=True, batch_size=7).fit(loader)
    torch.testing.assert_close(ragged.influences(*test, *train), one.influences(*test, *train))
    x, y = test
    numpy_f = one.test_factors(x.numpy(), y.numpy())
    torch.testing.assert_close(numpy_f, one.test_factors(x, y))


def test_sequence_layers_store_full_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, t = torch.randn(12, 5, 3, dtype=torch.float64), torch.randn(12, 5, 2, dtype=torch.float64)
    infl = EkfacInfluence(model, F.mse_loss, 0.1, update_diagonal=True).fit((x, t))
    assert infl.fisher_type == "empirical"  # not cross entropy
    assert infl.train_factor_width == infl.test_factor_width == 4 * 4 + 2 * 5
    flat = EkfacInfluence(model, F.mse_loss, 0.1).fit((x[:, 0], t[:, 0]))
    assert flat.train_factor_width == (4 + 4) + (2 + 5)
    with pytest.raises(ValueError, match=r"saw one position per sample at fit.*5 positions"):
        flat.train_factors(x, t)


def test_config_and_fingerprint(setup: dict[str, Any]) -> None:
    model, train = setup["model"], setup["train"]
    a = EkfacInfluence(model, hessian_regularization=REG).fit(train)
    assert a.regularization == a.hessian_regularization == REG
    cfg = a.influence_config()
    json.dumps(cfg)
    assert cfg["backend"] == "EkfacInfluence" and cfg["fisher_type"] == "pydvl"
    assert cfg["layers"] == ["0", "2", "5", "7"] and cfg["fit_data"] is not None
    b = EkfacInfluence(model, regularization=REG, update_diagonal=True).fit(train)
    assert b.influence_config() != cfg
    assert a.model_fingerprint() == b.model_fingerprint()
    assert a.excluded_parameters == []


def test_float32_model_close_to_float64(setup: dict[str, Any]) -> None:
    model, train, test = setup["model"], setup["train"], setup["test"]
    single = small_cnn().float()
    single.load_state_dict(model.state_dict())
    infl32 = EkfacInfluence(single.eval(), CE, REG, update_diagonal=True).fit(train)
    infl64 = EkfacInfluence(model, CE, REG, update_diagonal=True).fit(train)
    got = infl32.influences(*test, *train)
    assert got.dtype == torch.float32
    assert rel(got.double(), infl64.influences(*test, *train)) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"regularization": -1.0}, ValueError, "regularization must be >= 0"),
        (
            {"regularization": 0.2, "hessian_regularization": 0.1},
            ValueError,
            "disagree; pass one of them",
        ),
        ({"hessian_regularization": float("nan")}, ValueError, "finite number"),
        ({"update_diagonal": "yes"}, TypeError, "update_diagonal must be a bool"),
        ({"fisher_type": "true"}, ValueError, "fisher_type must be one of"),
        ({"loss": True}, TypeError, "pyDVL's positional update_diagonal is a keyword"),
        ({"loss": "ce"}, TypeError, "loss must be callable"),
        ({"memory_budget": 0}, ValueError, "memory_budget must be a positive integer"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"progress": "no"}, TypeError, "progress must be a bool"),
    ],
)
def test_bad_arguments(setup: dict[str, Any], kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        EkfacInfluence(setup["model"], **kwargs)


def test_memory_budget_errors(setup: dict[str, Any]) -> None:
    model, train = setup["model"], setup["train"]
    with pytest.raises(MemoryBudgetError, match=r"Kronecker factors.*ProjectedInfluence"):
        EkfacInfluence(model, regularization=REG, memory_budget=1000).fit(train)
    # the budget holds the curvature (12.2 KiB), a captured batch and the per-sample
    # gradients of a chunk (9.9 KiB) beside the factors returned
    infl = EkfacInfluence(model, regularization=REG, memory_budget=40_000).fit(train)
    with pytest.raises(MemoryBudgetError, match=r"test factors of 40 samples.*fewer samples"):
        infl.test_factors(*train)
    infl.test_factors(train[0][:5], train[1][:5])  # a smaller block fits


def test_unfitted_and_bad_factors(setup: dict[str, Any]) -> None:
    infl = EkfacInfluence(setup["model"], regularization=REG)
    assert not infl.is_fitted
    with pytest.raises(RuntimeError, match=r"call \.fit\(train_data\) first"):
        infl.test_factors(*setup["test"])
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = infl.train_factor_width
    infl.fit(setup["train"])
    assert infl.is_fitted
    test_f = infl.test_factors(*setup["test"])
    with pytest.raises(ValueError, match=r"train factors must be a tensor of shape \(n, 102\)"):
        infl.factor_product(test_f, test_f)
    with pytest.raises(ValueError, match="pairs rows"):
        infl.factor_diagonal(test_f, infl.train_factors(*setup["train"]))


def test_singular_curvature_needs_regularization(setup: dict[str, Any]) -> None:
    # pyDVL's pseudo-gradients sum to zero over the classes: G of the last layer is singular
    with pytest.raises(ValueError, match=r"layer '7' is singular.*regularization > 0"):
        EkfacInfluence(setup["model"]).fit(setup["train"])


def test_values_are_helpful_positive(setup: dict[str, Any]) -> None:
    """Sign convention: a training point is mostly helpful to itself."""
    model, train = setup["model"], setup["train"]
    infl = EkfacInfluence(model, CE, REG, update_diagonal=True).fit(train)
    assert np.all(infl.influences(*train, *train).diagonal().numpy() > 0)


@pytest.mark.parametrize("serial_max", [None, 4])
def test_eigh_is_torch_eigh_and_keeps_the_thread_count(
    serial_max: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factor eigensolver: torch's decomposition, the caller's thread count restored, on
    one thread (default limit) or on the caller's threads (order above the limit)."""
    if serial_max is not None:
        monkeypatch.setattr(kronecker, "SERIAL_EIGH_MAX", serial_max)
    order = 5
    torch.manual_seed(0)
    x = torch.randn(order + 3, order, dtype=torch.float64)
    m = x.T @ x
    torch.set_num_threads(2)  # the fixture restores the count it found
    values, vectors = eigh(m)
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(values, torch.linalg.eigh(m)[0])
    torch.testing.assert_close(vectors * values @ vectors.T, m)
    with pytest.raises(RuntimeError):  # an error inside leaves the count as it was
        eigh(torch.ones(order, order + 1, dtype=torch.float64))
    assert torch.get_num_threads() == 2
