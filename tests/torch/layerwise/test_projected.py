"""ProjectedInfluence: convergence to the unprojected preconditioners, seeds, the store, errors.

Unprojected references, in float64 on the small CNN of ``tests/models.py``: ``"identity"`` is the
plain inner product of per-sample layer gradients (``torch.func``), ``"fisher"`` the explicit
damped empirical Fisher solve ``g^T (F + lambda*Id)^-1 g'`` with ``F = mean g g^T``,
``"ekfac"``/``"kfac"`` :class:`EkfacInfluence` with/without ``update_diagonal``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import REG, cnn_data, small_cnn, tanh_mlp, trained_cnn
from test_ekfac import reference_grads

import infl_array as ia
from infl_array.torch import EkfacInfluence, MemoryBudgetError, ProjectedInfluence
from infl_array.torch.layerwise.capture import LayerRecord
from infl_array.torch.layerwise.projected import factor_width, split_width

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE = F.cross_entropy
N_PARAMS = 3 * 19 + 2 * 12 + 4 * 9 + 3 * 5  # 132 in the four layers


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = cnn_data(40, 0), cnn_data(7, 1)
    model = trained_cnn(small_cnn(), *train)
    g = torch.cat(reference_grads(model, *train), dim=1)
    gt = torch.cat(reference_grads(model, *test), dim=1)
    fisher = g.T @ g / g.shape[0] + REG * torch.eye(N_PARAMS, dtype=g.dtype)
    reference = {
        "identity": gt @ g.T,
        "fisher": torch.linalg.solve(fisher, gt.T).T @ g.T,
        "ekfac": EkfacInfluence(model, CE, REG, update_diagonal=True)
        .fit(train)
        .influences(*test, *train),
        "kfac": EkfacInfluence(model, CE, REG).fit(train).influences(*test, *train),
    }
    return {"model": model, "train": train, "test": test, "reference": reference}


def projected(setup: dict[str, Any], **kwargs: Any) -> torch.Tensor:
    infl = ProjectedInfluence(setup["model"], CE, REG, **kwargs).fit(setup["train"])
    return infl.test_factors(*setup["test"]) @ infl.train_factors(*setup["train"]).T


@pytest.mark.parametrize("preconditioner", ["identity", "fisher", "ekfac", "kfac"])
def test_converges_to_unprojected(setup: dict[str, Any], preconditioner: str) -> None:
    """Mean over 3 seeds of correlation and relative error at growing widths; exact at full."""
    expected = setup["reference"][preconditioner]
    corr, err = [], []
    for dim in (24, 64, 100):
        c, e = [], []
        for seed in range(3):
            got = projected(setup, projection_dim=dim, preconditioner=preconditioner, seed=seed)
            c.append(np.corrcoef(got.flatten(), expected.flatten())[0, 1])
            e.append(float((got - expected).norm() / expected.norm()))
        corr.append(np.mean(c))
        err.append(np.mean(e))
    assert corr[0] < corr[1] < corr[2] and corr[2] > 0.75
    assert err[0] > err[1] > err[2]
    full = projected(setup, projection_dim=N_PARAMS, preconditioner=preconditioner)
    torch.testing.assert_close(full, expected, rtol=1e-9, atol=1e-12)
    # wider than the parameters: still exact, width capped at the parameter count
    infl = ProjectedInfluence(setup["model"], CE, REG, projection_dim=10_000)
    assert infl.width == N_PARAMS


def test_seed_reproducible(setup: dict[str, Any]) -> None:
    a = projected(setup, projection_dim=50, seed=3)
    torch.testing.assert_close(a, projected(setup, projection_dim=50, seed=3), rtol=0, atol=0)
    assert not torch.allclose(a, projected(setup, projection_dim=50, seed=4))


def test_projections_are_scaled_orthonormal(setup: dict[str, Any]) -> None:
    infl = ProjectedInfluence(setup["model"], CE, REG, projection_dim=40).fit(setup["train"])
    for spec, (k_out, k_in), pair in zip(
        infl.layers, infl.projection_shapes, infl._proj, strict=True
    ):
        for p, d, k in ((pair[0], spec.width_in, k_in), (pair[1], spec.d_out, k_out)):
            if k == d:
                assert p is None  # not projected
            else:
                assert p is not None and p.shape == (k, d)
                torch.testing.assert_close(p @ p.T, d / k * torch.eye(k, dtype=p.dtype))


def test_never_forms_full_layer_gradients(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(self: LayerRecord, rows: slice = slice(None)) -> torch.Tensor:
        raise AssertionError(f"per-sample gradient of {self.spec.name} formed")

    monkeypatch.setattr(LayerRecord, "per_sample_grads", forbidden)
    for pre in ("ekfac", "fisher"):
        infl = ProjectedInfluence(setup["model"], CE, REG, 20, pre).fit(setup["train"])
        assert infl.train_factors(*setup["train"]).shape == (40, infl.width)


def test_split_and_factor_widths() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = [int(s) for s in rng.integers(1, 500, size=rng.integers(1, 6))]
        total = int(rng.integers(len(sizes), 1500))
        shares = split_width(sizes, total)
        assert sum(shares) == min(total, sum(sizes))
        assert all(1 <= w <= s for w, s in zip(shares, sizes, strict=True))
        uncapped = [w for w, s in zip(shares, sizes, strict=True) if w < s]
        assert not uncapped or max(uncapped) - min(uncapped) <= 1 + max(0, total - sum(sizes))
    for w, d_out, d_in in itertools.product((1, 5, 37, 300), (1, 3, 64), (1, 9, 200)):
        k_out, k_in = factor_width(w, d_out, d_in)
        assert 1 <= k_out <= d_out and 1 <= k_in <= d_in
        assert k_out * k_in <= max(w, 1)
        assert k_out * k_in >= min(w, d_out * d_in) // 2


def small_store(setup: dict[str, Any], infl: ProjectedInfluence, path: Path) -> ia.InfluenceArray:
    """A float64 store of the setup's test x train points, blocks of 4 x 16."""
    test, train = setup["test"], setup["train"]
    return ia.InfluenceArray.create(
        path, infl, test=test, train=train, block_shape=(4, 16), dtype="float64"
    )


def test_through_influence_array(setup: dict[str, Any], tmp_path: Path) -> None:
    infl = ProjectedInfluence(setup["model"], CE, REG, projection_dim=64).fit(setup["train"])
    expected = (infl.test_factors(*setup["test"]) @ infl.train_factors(*setup["train"]).T).numpy()
    arr = small_store(setup, infl, tmp_path / "s")
    values = np.asarray(arr)
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        arr.self_influence()[:],
        np.diag(
            (infl.test_factors(*setup["train"]) @ infl.train_factors(*setup["train"]).T).numpy()
        ),
        rtol=1e-10,
    )
    # an equal model refitted in new objects reopens the store without computing
    copy = small_cnn()
    copy.load_state_dict(setup["model"].state_dict())
    again = ProjectedInfluence(copy.eval(), CE, REG, projection_dim=64).fit(setup["train"])
    reopened = ia.open(tmp_path / "s", again, test=setup["test"], train=setup["train"])
    np.testing.assert_array_equal(reopened[2:5], values[2:5])
    other_seed = ProjectedInfluence(copy, CE, REG, projection_dim=64, seed=1).fit(setup["train"])
    with pytest.raises(ia.StaleCacheError):
        ia.open(tmp_path / "s", other_seed, test=setup["test"], train=setup["train"])


def test_config(setup: dict[str, Any]) -> None:
    infl = ProjectedInfluence(setup["model"], CE, REG, projection_dim=64, preconditioner="fisher")
    cfg = infl.fit(setup["train"]).influence_config()
    json.dumps(cfg)
    assert cfg["backend"] == "ProjectedInfluence" and cfg["preconditioner"] == "fisher"
    assert cfg["projection_dim"] == 64 and cfg["seed"] == 0
    assert sum(a * b for a, b in cfg["projection_shapes"]) == infl.width == 64
    assert infl.test_factor_width == infl.train_factor_width == 64


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"projection_dim": 3}, ValueError, r"projection_dim must be an integer >= .* \(4"),
        ({"projection_dim": 64.0}, ValueError, "projection_dim must be an integer"),
        ({"projection_dim": True}, ValueError, "projection_dim must be an integer"),
        ({"preconditioner": "diag"}, ValueError, "preconditioner must be one of"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"seed": "0"}, ValueError, "seed must be an integer >= 0"),
        ({"regularization": -0.1}, ValueError, "regularization must be >= 0"),
        ({"fisher_type": "mc"}, ValueError, "fisher_type must be one of"),
        (
            {"projection_dim": 100_000, "preconditioner": "fisher", "memory_budget": 1 << 20},
            MemoryBudgetError,
            r"projected Fisher \(132 x 132 float64\).*lower projection_dim",
        ),
    ],
)
def test_bad_arguments(setup: dict[str, Any], kwargs: dict, error: type, match: str) -> None:
    kwargs = {"regularization": REG, **kwargs}
    if error is MemoryBudgetError:
        kwargs["memory_budget"] = 100_000
    with pytest.raises(error, match=match):
        ProjectedInfluence(setup["model"], CE, **kwargs)


def test_singular_fisher_needs_regularization(setup: dict[str, Any]) -> None:
    x, y = setup["train"]
    infl = ProjectedInfluence(setup["model"], CE, 0.0, projection_dim=100, preconditioner="fisher")
    with pytest.raises(ValueError, match=r"not positive definite.*10 fit samples"):
        infl.fit((x[:10], y[:10]))


def test_unfitted(setup: dict[str, Any]) -> None:
    infl = ProjectedInfluence(setup["model"], CE, REG, projection_dim=64)
    with pytest.raises(RuntimeError, match=r"call \.fit\(train_data\) first"):
        infl.train_factors(*setup["train"])


def test_identity_needs_no_fit_pass(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    original = ProjectedInfluence._fit_records

    def counting(self: ProjectedInfluence, kind: str, desc: str):
        calls.append(desc)
        return original(self, kind, desc)

    monkeypatch.setattr(ProjectedInfluence, "_fit_records", counting)
    ProjectedInfluence(setup["model"], CE, projection_dim=64, preconditioner="identity").fit(
        setup["train"]
    )
    ProjectedInfluence(setup["model"], CE, REG, projection_dim=64).fit(setup["train"])
    assert calls == ["K-FAC factors", "EK-FAC eigenvalues"]


def test_float32_model(setup: dict[str, Any]) -> None:
    single = small_cnn().float()
    single.load_state_dict(setup["model"].state_dict())
    infl = ProjectedInfluence(single.eval(), CE, REG, projection_dim=64).fit(setup["train"])
    f32 = infl.test_factors(*setup["test"]) @ infl.train_factors(*setup["train"]).T
    assert f32.dtype == torch.float32
    f64 = projected(setup, projection_dim=64)
    assert float((f32.double() - f64).abs().max() / f64.abs().max()) < 1e-4


def test_sequence_model() -> None:
    model = tanh_mlp(6, 8, 2, seed=0)
    x, t = torch.randn(20, 4, 6, dtype=torch.float64), torch.randn(20, 4, 2, dtype=torch.float64)
    full = EkfacInfluence(model, F.mse_loss, 0.1, update_diagonal=True).fit((x, t))
    infl = ProjectedInfluence(model, F.mse_loss, 0.1, projection_dim=1000).fit((x, t))
    torch.testing.assert_close(
        infl.test_factors(x[:3], t[:3]) @ infl.train_factors(x, t).T,
        full.influences(x[:3], t[:3], x, t),
    )


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the capture passes ProjectedInfluence runs from now on."""
    sizes: list[int] = []
    original = ProjectedInfluence._records

    def counting(self: ProjectedInfluence, x: torch.Tensor, y: torch.Tensor, kind: str = "loss"):
        sizes.append(int(x.shape[0]))
        return original(self, x, y, kind)

    monkeypatch.setattr(ProjectedInfluence, "_records", counting)
    return sizes


@pytest.mark.parametrize("preconditioner", ["ekfac", "kfac", "fisher"])
def test_train_factors_from_the_fit(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, preconditioner: str
) -> None:
    """The fit's projected gradients are the train factors: no pass, the same values."""
    kw: dict[str, Any] = {"projection_dim": 64, "preconditioner": preconditioner}
    kw["fisher_type"] = "empirical"
    fresh = ProjectedInfluence(setup["model"], CE, REG, **kw, reuse_fit_gradients=False)
    expected = fresh.fit(setup["train"]).train_factors(*setup["train"])
    reference = fresh.train_factors(*setup["test"])
    assert fresh.fit_rows is None
    infl = ProjectedInfluence(setup["model"], CE, REG, **kw).fit(setup["train"])
    assert infl.fit_rows is not None and len(infl.fit_rows) == 40
    passes = count_passes(monkeypatch)
    got = infl.train_factors(*setup["train"])
    assert passes == [] and infl.fit_rows.hits == 40
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # the same samples in another order and as numpy arrays: found by content
    x, y = setup["train"]
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(infl.train_factors(x[perm].numpy(), y[perm].numpy()), got[perm])
    # fit samples mixed with new ones: one pass, over the new samples only
    tx, ty = setup["test"]
    mixed = infl.train_factors(torch.cat([x[:3], tx, x[30:]]), torch.cat([y[:3], ty, y[30:]]))
    assert passes == [7]
    torch.testing.assert_close(mixed[:3], expected[:3], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mixed[10:], expected[30:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mixed[3:10], reference, rtol=1e-12, atol=1e-14)
    # test factors are not taken from the fit (they are preconditioned)
    infl.test_factors(x[:5], y[:5])
    assert passes == [7, 5]


def test_fill_runs_no_train_pass(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fill after the fit passes over the test data only; values as without reuse."""
    kw: dict[str, Any] = {"projection_dim": 64, "fisher_type": "empirical"}
    infl = ProjectedInfluence(setup["model"], CE, REG, **kw).fit(setup["train"])
    fresh = ProjectedInfluence(setup["model"], CE, REG, **kw, reuse_fit_gradients=False)
    fresh.fit(setup["train"])
    expected = (fresh.test_factors(*setup["test"]) @ fresh.train_factors(*setup["train"]).T).numpy()
    passes = count_passes(monkeypatch)
    arr = small_store(setup, infl, tmp_path / "s")
    arr.fill(progress=False)
    assert sum(passes) == 7  # the 7 test points, once
    # 3 block columns: the first (sizing the tiles), then the other two in one column group,
    # all from the fit's kept gradients
    assert arr.stats.train_factors == 2
    assert infl.fit_rows is not None and infl.fit_rows.hits == 40
    np.testing.assert_allclose(arr[:], expected, rtol=1e-10, atol=1e-12)


def test_fit_rows_kept_only_where_they_are_train_factors(setup: dict[str, Any]) -> None:
    def rows(**kw: Any) -> Any:
        kw = {"projection_dim": 64, **kw}
        return ProjectedInfluence(setup["model"], CE, REG, **kw).fit(setup["train"]).fit_rows

    # pyDVL's curvature (the default for cross-entropy) fits on pseudo-gradients
    assert rows() is None and rows(preconditioner="kfac") is None
    assert rows(preconditioner="identity") is None  # no fit pass
    assert rows(preconditioner="fisher") is not None  # fits on loss gradients
    # more than a quarter of memory_budget: not kept, computed as before
    assert rows(fisher_type="empirical", memory_budget=4 * 40 * 64 * 8 - 1) is None
    assert rows(fisher_type="empirical", memory_budget=4 * 40 * 64 * 8) is not None
    # rows taken from the fit are held to the budget as computed rows are
    kw: dict[str, Any] = {"projection_dim": 64, "fisher_type": "empirical"}
    infl = ProjectedInfluence(setup["model"], CE, REG, memory_budget=4 * 40 * 64 * 8, **kw)
    x, y = setup["train"]
    infl.fit((x, y))
    with pytest.raises(MemoryBudgetError, match="projected factors of 400 samples"):
        infl.train_factors(x.repeat(10, 1, 1, 1), y.repeat(10))
    with pytest.raises(TypeError, match="reuse_fit_gradients must be a bool"):
        ProjectedInfluence(setup["model"], CE, REG, reuse_fit_gradients=1)  # type: ignore[arg-type]


def test_fit_rows_with_duplicate_samples(setup: dict[str, Any]) -> None:
    x, y = setup["train"]
    twice = (torch.cat([x, x[:10]]), torch.cat([y, y[:10]]))
    kw: dict[str, Any] = {"projection_dim": 64, "fisher_type": "empirical"}
    infl = ProjectedInfluence(setup["model"], CE, REG, **kw).fit(twice)
    assert infl.fit_rows is not None and len(infl.fit_rows) == 40
    got = infl.train_factors(*twice)
    torch.testing.assert_close(got[40:], got[:10], rtol=0, atol=0)
    # a refit starts afresh
    infl.fit((x[:20], y[:20]))
    assert len(infl.fit_rows) == 20


def test_fit_rows_by_content() -> None:
    from infl_array.torch.layerwise.fitrows import FitRows, sample_keys

    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    keys = sample_keys(x, y)
    assert len(set(keys)) == 4 and all(len(k) == 16 for k in keys)
    assert sample_keys(x.double(), y) != keys  # the dtype is part of a sample's bytes
    assert sample_keys(x, y + 1)[0] != keys[0]
    rows = FitRows(4, 2, torch.zeros(1, dtype=torch.float32))
    values = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    rows.add(keys[:2] + keys[:1], values[[0, 1, 0]])  # a sample twice in one batch: kept once
    rows.add(keys[2:], values[2:])
    assert len(rows) == 4 and rows.nbytes == 4 * 2 * 4
    found, kept = rows.take([keys[3], b"other", keys[0]])
    assert found == [0, 2] and kept is not None
    torch.testing.assert_close(kept, values[[3, 0]])
    with pytest.raises(ValueError, match="2 sample keys for 1 rows"):
        rows.add(keys[:2], values[:1])
    rows.add([b"new sample"], values[:1])  # over capacity: nothing is kept any more
    assert not rows.active and len(rows) == 0 and rows.take(keys) == ([], None)
