"""What a new user meets with the torch backends (issue 13): models in training mode, data the
model or loss cannot take, indefinite Hessians and what the solves found, lazy fitting."""

from __future__ import annotations

import json
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import tanh_mlp, three_class_data
from torch import nn

import infl_array as ia
from infl_array.torch import (
    ArnoldiInfluence,
    CgInfluence,
    ConvergenceWarning,
    DirectInfluence,
    IndefiniteHessianWarning,
    InverseHarmonicMeanInfluence,
    JacobiPreconditioner,
    LissaInfluence,
    NystroemSketchInfluence,
)

N_TRAIN, N_TEST = 40, 9


def _mlp(seed: int = 0, hidden: nn.Module | None = None) -> nn.Module:
    return tanh_mlp(13, 6, 3, seed=seed, insert=hidden)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return three_class_data(n, 13, seed)


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """A small classifier trained to near a minimum (H + 0.1*Id positive definite)."""
    model = _mlp(0)
    train, test = _data(N_TRAIN, 0), _data(N_TEST, 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(train[0]), train[1]) + 1e-2 * sum(
            (p**2).sum() for p in model.parameters()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return {"model": model.eval(), "train": train, "test": test}


def _values(inf: Any, p: dict[str, Any]) -> torch.Tensor:
    return inf.influences(*p["test"], *p["train"])


# ---------------------------------------------------------------- models in training mode


@pytest.mark.parametrize(
    ("layer", "name"), [(nn.Dropout(0.3), "Dropout"), (nn.BatchNorm1d(6), "BatchNorm1d")]
)
def test_training_mode_refused_at_fit_with_the_fix(layer: nn.Module, name: str) -> None:
    model = _mlp(0, layer)  # a fresh module is in training mode
    with pytest.raises(ValueError, match=rf"'2' \({name}\).*Call model\.eval\(\) before fit"):
        DirectInfluence(model, F.cross_entropy, 1.0).fit(_data(N_TRAIN, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # untrained: H + 1.0*Id is positive definite here
    inf = DirectInfluence(model.eval(), F.cross_entropy, 1.0).fit(_data(N_TRAIN, 0))
    assert bool(torch.isfinite(inf.test_factors(*_data(3, 1))).all())
    after = model.state_dict()  # running statistics are never updated
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("layer", [nn.Dropout(0.3), nn.BatchNorm1d(6)])
def test_training_mode_refused_through_create(tmp_path: Path, layer: nn.Module) -> None:
    model = _mlp(0, layer).eval()
    train, test = _data(N_TRAIN, 0), _data(N_TEST, 1)
    inf = DirectInfluence(model, F.cross_entropy, 0.1).fit(train)
    model.train()  # switched back after fit, e.g. to continue training
    with pytest.raises(ValueError, match=r"evaluation mode.*model\.eval\(\)"):
        ia.InfluenceArray.create(tmp_path / "s", inf, test=test, train=train)
    assert not (tmp_path / "s").exists()  # refused before anything was written
    assert all(not m.training for m in model.eval().modules())


def test_modules_alike_in_both_modes_may_stay_in_training_mode(trained) -> None:
    model = _mlp(0)
    model.load_state_dict(trained["model"].state_dict())
    model.train()  # Linear and Tanh only: nothing to refuse
    inf = DirectInfluence(model, F.cross_entropy, 0.1).fit(trained["train"])
    ref = DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit(trained["train"])
    assert torch.equal(_values(inf, trained), _values(ref, trained))


def test_random_custom_module_is_reported_with_the_fix() -> None:
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.01 * torch.randn_like(x)

    model = _mlp(0, Noisy()).eval()
    with pytest.raises(ValueError, match=r"vmap.*random operation.*model\.eval\(\)"):
        DirectInfluence(model, F.cross_entropy, 0.1).fit(_data(N_TRAIN, 0))


# ---------------------------------------------------------------- bad data


@pytest.fixture(scope="module")
def fitted(trained) -> DirectInfluence:
    return DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit(trained["train"])


def _bad(kind: str) -> tuple[Any, Any]:
    x, y = _data(N_TEST, 1)
    return {
        "features": (x[:, :12], y),
        "labels (n, 1)": (x, y[:, None]),
        "float labels": (x, y.double()),
        "uint8 images": ((x.abs() * 50).to(torch.uint8), y),
        "numpy features": (x[:, :12].numpy(), y.numpy()),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        (
            "features",
            ValueError,
            r"first layer \('0', Linear\) expects 13 features per sample; "
            r"test has 12",
        ),
        ("numpy features", ValueError, r"expects 13 features per sample; test has 12"),
        (
            "labels (n, 1)",
            ValueError,
            r"cross_entropy failed .*y of shape \(n, 1\).*"
            r"Pass y\.squeeze\(-1\)",
        ),
        ("float labels", ValueError, r"dtype torch\.float64.*Pass y\.long\(\)"),
        ("uint8 images", TypeError, r"x has dtype torch\.uint8.*x\.float\(\) / 255"),
    ],
)
def test_check_data_says_what_came_and_the_fix(trained, kind, error, match) -> None:
    inf = DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit(trained["train"])
    x, y = _bad(kind)
    with pytest.raises(error, match=match):
        inf.check_data(x, y, what="test")
    inf.check_data(*trained["test"], what="test")
    assert not inf.is_prepared  # checking computes no curvature


def test_bad_data_refused_at_fit(trained) -> None:
    x, y = trained["train"]
    with pytest.raises(ValueError, match=r"expects 13 features per sample; train has 12"):
        DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit((x[:, :12], y))
    with pytest.raises(ValueError, match=r"y\.squeeze\(-1\)"):
        CgInfluence(trained["model"], F.cross_entropy, 0.1).fit((x, y[:, None]))


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("features", ValueError, r"expects 13 features per sample; test has 12"),
        ("labels (n, 1)", ValueError, r"y of shape \(n, 1\).*Pass y\.squeeze\(-1\)"),
        ("uint8 images", TypeError, r"x has dtype torch\.uint8.*x\.float\(\) / 255"),
    ],
)
def test_bad_data_refused_by_create_and_open_before_writing(
    tmp_path: Path, fitted, trained, kind, error, match
) -> None:
    bad, store = _bad(kind), tmp_path / "s"
    with pytest.raises(error, match=match):
        ia.InfluenceArray.create(store, fitted, test=bad, train=trained["train"])
    assert not store.exists()  # nothing was written
    with pytest.raises(error, match=match.replace("test", "train")):
        ia.InfluenceArray.create(store, fitted, test=trained["test"], train=bad)
    assert not store.exists()
    arr = ia.InfluenceArray.create(store, fitted, test=trained["test"], train=trained["train"])
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    with pytest.raises(error, match=match):
        ia.open(store, fitted, test=bad, train=trained["train"])
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert arr.computed.sum() == 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_integer_labels_of_any_width_through_create(tmp_path: Path, fitted, trained, dtype):
    (xt, yt), (x, y) = trained["test"], trained["train"]
    got = ia.InfluenceArray.create(
        tmp_path / "s", fitted, test=(xt, yt.to(dtype)), train=(x.numpy(), y.to(dtype).numpy())
    )
    ref = ia.InfluenceArray.create(tmp_path / "r", fitted, test=(xt, yt), train=(x, y))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (nn.CrossEntropyLoss(reduction="sum"), r"MEAN over the samples.*reduction='mean'"),
        (nn.CrossEntropyLoss(reduction="none"), r"reduce to a scalar.*got \(2,\)"),
    ],
)
def test_loss_must_reduce_by_mean(trained, loss, match) -> None:
    with pytest.raises(ValueError, match=match):
        DirectInfluence(trained["model"], loss, 0.1).fit(trained["train"])


def test_broadcasting_regression_targets_refused() -> None:
    model = nn.Linear(13, 1).double().eval()
    x, y = _data(N_TRAIN, 0)
    with pytest.raises(ValueError, match=r"warned.*target size.*Pass y\.unsqueeze\(-1\)"):
        DirectInfluence(model, F.mse_loss, 0.1).fit((x, y.double()))


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_integer_labels_of_any_width_work(trained, dtype) -> None:
    x, y = trained["train"]
    xt, yt = trained["test"]
    ref = DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit((x, y))
    inf = DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit((x, y.to(dtype)))
    inf.check_data(xt.numpy(), yt.to(dtype).numpy(), what="test")
    got = inf.influences(xt, yt.to(dtype), x, y.to(dtype))
    assert torch.equal(got, ref.influences(xt, yt, x, y))


# ---------------------------------------------------------------- indefinite Hessians


@pytest.fixture(scope="module")
def untrained() -> dict[str, Any]:
    """An untrained network: H has clearly negative eigenvalues."""
    model = _mlp(3).eval()
    train, test = _data(N_TRAIN, 0), _data(N_TEST, 1)
    ref = DirectInfluence(model, F.cross_entropy, 0.0).fit(train)
    lowest = float(torch.linalg.eigvalsh(ref.hessian())[0])
    assert lowest < -0.02
    return {"model": model, "train": train, "test": test, "lowest": lowest}


def test_direct_warns_and_records_an_indefinite_hessian(untrained) -> None:
    p, lam = untrained, 0.01
    inf = DirectInfluence(p["model"], F.cross_entropy, lam).fit(p["train"])  # lazy: silent
    assert inf.diagnostics() == {}
    want = f"smallest eigenvalue {p['lowest'] + lam:.3g} at regularization 0.01"
    with pytest.warns(IndefiniteHessianWarning, match=want) as rec:
        inf.test_factors(*p["test"])
    assert "Increase regularization" in str(rec[0].message)
    diag = inf.diagnostics()
    assert list(diag) == ["not_positive_definite"] and want in diag["not_positive_definite"]
    assert json.loads(json.dumps(diag)) == diag
    # eager: the warning surfaces at fit; a large enough regularization is positive definite
    with pytest.warns(IndefiniteHessianWarning, match=want):
        DirectInfluence(p["model"], F.cross_entropy, lam).fit(p["train"], lazy=False)
    fine = DirectInfluence(p["model"], F.cross_entropy, lam - p["lowest"] + 0.05)
    fine.fit(p["train"], lazy=False)
    assert fine.diagnostics() == {}


def test_arnoldi_warns_on_negative_kept_eigenvalues(untrained) -> None:
    p = untrained
    inf = ArnoldiInfluence(p["model"], F.cross_entropy, 0.01, rank=inf_rank(p))
    inf.fit(p["train"])
    with pytest.warns(IndefiniteHessianWarning, match="kept eigenpairs .* not all positive"):
        inf.test_factors(*p["test"])
    assert "not_positive_definite" in inf.diagnostics()


def inf_rank(p: dict[str, Any]) -> int:
    return sum(q.numel() for q in p["model"].parameters())  # all: the exact eigendecomposition


def test_cg_and_lissa_record_what_their_solves_found(trained, untrained) -> None:
    cg = CgInfluence(trained["model"], F.cross_entropy, 0.1, maxiter=2)
    cg.fit(trained["train"])
    for _ in range(2):
        with pytest.warns(ConvergenceWarning, match="maxiter=2"):
            cg.test_factors(*trained["test"])
    diag = cg.diagnostics()
    assert list(diag) == ["not_converged"]
    assert f"in {2 * N_TEST} of {2 * N_TEST} systems solved" in diag["not_converged"]
    quiet = CgInfluence(trained["model"], F.cross_entropy, 0.1, maxiter=2)
    quiet.warn_on_max_iteration = False
    quiet.fit(trained["train"]).test_factors(*trained["test"])  # no warning, still recorded
    assert "not_converged" in quiet.diagnostics()
    bad = CgInfluence(untrained["model"], F.cross_entropy, 0.0).fit(untrained["train"])
    with pytest.warns(ConvergenceWarning, match="not positive definite"):
        bad.test_factors(*untrained["test"])
    assert "not_positive_definite" in bad.diagnostics()
    lissa = LissaInfluence(trained["model"], F.cross_entropy, 0.1, maxiter=2)
    with pytest.warns(ConvergenceWarning, match="maxiter=2"):
        lissa.fit(trained["train"]).test_factors(*trained["test"])
    assert "LissaInfluence stopped at maxiter=2" in lissa.diagnostics()["not_converged"]
    cg.fit(trained["train"])  # a new fit forgets
    assert cg.diagnostics() == {}


# ---------------------------------------------------------------- lazy fit


def _backends(model: nn.Module) -> list[Any]:
    ce = F.cross_entropy
    return [
        DirectInfluence(model, ce, 0.1),
        CgInfluence(model, ce, 0.1, preconditioner=JacobiPreconditioner(seed=1)),
        LissaInfluence(model, ce, 0.1, maxiter=1000, scale=1.5, rtol=1e-6),  # H < 1.2
        ArnoldiInfluence(model, ce, 0.1, rank=10),
        NystroemSketchInfluence(model, ce, 0.1, rank=10, seed=2),
        InverseHarmonicMeanInfluence(model, ce, 0.1),
    ]


@pytest.mark.parametrize("i", range(6))
def test_lazy_fit_defers_the_work_and_gives_identical_values(trained, i) -> None:
    lazy = _backends(trained["model"])[i].fit(trained["train"])
    eager = _backends(trained["model"])[i].fit(trained["train"], lazy=False)
    assert lazy.is_fitted and not lazy.is_prepared and eager.is_prepared
    assert lazy.influence_config() == eager.influence_config()
    assert lazy.model_fingerprint() == eager.model_fingerprint()
    assert lazy.diagnostics() == {} == eager.diagnostics()
    if not isinstance(lazy, ArnoldiInfluence):  # plain gradients: nothing to prepare
        lazy.train_factors(*trained["train"])
        assert not lazy.is_prepared
    assert torch.equal(_values(lazy, trained), _values(eager, trained))
    assert lazy.is_prepared


def test_prepare_runs_once_across_threads(trained, monkeypatch) -> None:
    # a private copy of the model: prepare() runs the build under its lock, and nothing else
    # touches the module while the threads run
    model = _mlp(0)
    model.load_state_dict(trained["model"].state_dict())
    inf = DirectInfluence(model.eval(), F.cross_entropy, 0.1).fit(trained["train"])
    calls = []
    original = inf.curvature_blocks

    def counting() -> list[torch.Tensor]:
        calls.append(1)
        return original()

    monkeypatch.setattr(inf, "curvature_blocks", counting)
    start = threading.Barrier(4)

    def prepare() -> None:
        start.wait()
        inf.prepare()

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and inf.is_prepared
    assert inf.prepare() is inf and len(calls) == 1
    ref = DirectInfluence(trained["model"], F.cross_entropy, 0.1).fit(trained["train"])
    assert torch.equal(inf.test_factors(*trained["test"]), ref.test_factors(*trained["test"]))


def test_prepare_before_fit_raises_and_pickling_keeps_laziness(trained) -> None:
    inf = DirectInfluence(trained["model"], F.cross_entropy, 0.1)
    with pytest.raises(RuntimeError, match=r"call \.fit\(train_data\) first"):
        inf.prepare()
    inf.fit(trained["train"])
    copy = pickle.loads(pickle.dumps(inf))
    assert copy.is_fitted and not copy.is_prepared
    assert torch.equal(_values(copy, trained), _values(inf, trained))
    assert pickle.loads(pickle.dumps(inf)).is_prepared


@pytest.mark.parametrize("cls", [DirectInfluence, ArnoldiInfluence])
def test_reopening_a_full_store_never_prepares(tmp_path: Path, trained, cls) -> None:
    kwargs = {"rank": 10} if cls is ArnoldiInfluence else {}
    store, train, test = tmp_path / "s", trained["train"], trained["test"]
    first = cls(trained["model"], F.cross_entropy, 0.1, **kwargs).fit(train)
    arr = ia.InfluenceArray.create(store, first, test=test, train=train, block_shape=(4, 16))
    full = np.asarray(arr)
    arr.self_influence()[:]
    # a new process would do this: a fresh model object, fitted on the same data
    model = _mlp(7)
    model.load_state_dict(trained["model"].state_dict())
    again = cls(model.eval(), F.cross_entropy, 0.1, **kwargs).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = ia.open(store, again, test=test, train=train)
        np.testing.assert_array_equal(np.asarray(reopened), full)
        np.testing.assert_array_equal(reopened.self_influence()[:], arr.self_influence()[:])
    assert not again.is_prepared
    # a missing block prepares it, with the same values as the eager fit
    other = tmp_path / "t"
    eager = cls(trained["model"], F.cross_entropy, 0.1, **kwargs).fit(train, lazy=False)
    lazy = cls(model, F.cross_entropy, 0.1, **kwargs).fit(train)
    a = ia.InfluenceArray.create(other, lazy, test=test, train=train, block_shape=(4, 16))
    b = ia.InfluenceArray.create(tmp_path / "u", eager, test=test, train=train, block_shape=(4, 16))
    np.testing.assert_array_equal(a[:4], b[:4])
    assert lazy.is_prepared
