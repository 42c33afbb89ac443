"""Tests of infl_array.torch.source.source: model-backed block sources and their factor memo."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from models import binary_data, tanh_mlp
from torch import nn

from infl_array.torch.full.functional import model_fingerprint
from infl_array.torch.source.pydvl import PyDVLAdapter, is_pydvl_model
from infl_array.torch.source.source import ModelBlockSource, make_block_source


@pytest.fixture(autouse=True)
def _float64_default() -> Iterator[None]:
    """These tests compare in float64; the default dtype is restored for the tests after them."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# ---------------------------------------------------------------------------------- stand-ins


class LinearLSQ:
    """Least squares ``0.5 * mean (x.w - y)^2`` with an explicit Hessian: the protocol, in torch."""

    def __init__(self, w: torch.Tensor, regularization: float = 0.1) -> None:
        self.w = w.clone()
        self.regularization = regularization
        self.fit_fp: str | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> LinearLSQ:
        self.h = x.T @ x / x.shape[0] + self.regularization * torch.eye(x.shape[1])
        self.fit_fp = str(hash((tuple(x.flatten().tolist()), tuple(y.tolist()))))
        return self

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ self.w - y)[:, None] * x

    def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.h, self.grads(x, y).T).T

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.grads(x, y)

    def influence_config(self) -> dict[str, Any]:
        return {"backend": "LinearLSQ", "regularization": self.regularization, "fit": self.fit_fp}

    def model_fingerprint(self) -> str:
        return str(self.w.tolist())


class NumpyPlugin:
    """A user plug-in: protocol only (no model_fingerprint, no is_fitted), numpy factors."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a  # (d, d) symmetric positive definite "inverse Hessian"

    def test_factors(self, x: Any, y: Any) -> np.ndarray:
        return (np.asarray(x) * np.asarray(y)[:, None]) @ self.a

    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        return np.asarray(x) * np.asarray(y)[:, None]

    def influence_config(self) -> dict[str, Any]:
        return {"backend": "NumpyPlugin", "a": self.a.tolist()}


class Counting:
    """Wraps a protocol backend and records which ranges each factor was computed for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.test_calls: list[int] = []
        self.train_calls: list[int] = []

    def test_factors(self, x: Any, y: Any) -> Any:
        self.test_calls.append(len(x))
        return self.inner.test_factors(x, y)

    def train_factors(self, x: Any, y: Any) -> Any:
        self.train_calls.append(len(x))
        return self.inner.train_factors(x, y)

    def influence_config(self) -> dict[str, Any]:
        return self.inner.influence_config()


class FakePyDVL:
    """Duck-typed stand-in for a pyDVL InfluenceFunctionModel over LinearLSQ."""

    def __init__(self, inner: LinearLSQ | None, regularization: float = 0.1) -> None:
        self.inner = inner
        self.regularization = regularization
        self.model = nn.Linear(3, 1)
        self.loss = torch.nn.functional.mse_loss

    @property
    def is_fitted(self) -> bool:
        return self.inner is not None

    def influence_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.inner is not None
        return self.inner.test_factors(x, y)

    def influences_from_factors(
        self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: Any = "up"
    ) -> torch.Tensor:
        assert mode == "up"
        assert self.inner is not None
        return z @ self.inner.train_factors(x, y).T


def lsq_data(n: int, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, generator=g)


@pytest.fixture
def lsq() -> tuple[LinearLSQ, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    train = lsq_data(23, seed=1)
    test = lsq_data(11, seed=2)
    model = LinearLSQ(torch.tensor([0.5, -1.0, 2.0])).fit(*train)
    return model, test, train


def assemble(src: ModelBlockSource, br: int, bc: int) -> np.ndarray:
    out = np.empty((src.n_test, src.n_train))
    for r in range(0, src.n_test, br):
        for c in range(0, src.n_train, bc):
            rows = range(r, min(r + br, src.n_test))
            cols = range(c, min(c + bc, src.n_train))
            out[r : rows.stop, c : cols.stop] = src.compute_block(rows, cols)
    return out


# ---------------------------------------------------------------------------------- values


def test_block_equals_factor_product_and_double_loop(lsq: Any) -> None:
    model, test, train = lsq
    src = make_block_source(model, test, train)
    assert (src.n_test, src.n_train) == (11, 23)
    block = src.compute_block(range(2, 9), range(5, 20))
    assert block.dtype == np.float64 and block.flags.c_contiguous
    assert block.shape == (7, 15)
    expect = (model.test_factors(*test) @ model.train_factors(*train).T).numpy()
    np.testing.assert_allclose(block, expect[2:9, 5:20], rtol=1e-13, atol=1e-15)
    # the definition, one pair at a time
    h_inv = torch.linalg.inv(model.h)
    for i in range(2, 9):
        gi = model.grads(test[0][i : i + 1], test[1][i : i + 1])[0]
        for j in range(5, 20):
            gj = model.grads(train[0][j : j + 1], train[1][j : j + 1])[0]
            assert block[i - 2, j - 5] == pytest.approx(float(gi @ h_inv @ gj), rel=1e-10)


def test_partitions_give_identical_values(lsq: Any) -> None:
    model, test, train = lsq
    ref = assemble(make_block_source(model, test, train), 11, 23)
    for br, bc in [(1, 1), (3, 5), (4, 23), (11, 7), (2, 16)]:
        got = assemble(make_block_source(model, test, train), br, bc)
        # factors are per sample; only the solver's float64 rounding may differ with batch size
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())


def test_empty_ranges_and_bad_ranges(lsq: Any) -> None:
    src = make_block_source(*lsq)
    assert src.compute_block(range(3, 3), range(0, 5)).shape == (0, 5)
    with pytest.raises(IndexError):
        src.compute_block(range(0, 12), range(0, 5))
    with pytest.raises(IndexError):
        src.compute_block(range(0, 4, 2), range(0, 5))
    with pytest.raises(TypeError):
        src.compute_block([0, 1], range(0, 5))  # type: ignore[arg-type]


def test_self_influence_is_diagonal(lsq: Any) -> None:
    model, _, train = lsq
    src = make_block_source(model, train, train)
    full = assemble(src, 5, 5)
    got = np.concatenate([src.compute_diagonal(range(s, min(s + 6, 23))) for s in range(0, 23, 6)])
    assert got.dtype == np.float64 and got.shape == (23,)
    np.testing.assert_allclose(got, np.diag(full), rtol=1e-13)
    assert (got > 0).all()  # g^T A^-1 g with A positive definite


def test_numpy_plugin_without_fingerprint() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    a = m @ m.T + np.eye(4)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    y = rng.normal(size=9).astype(np.float32)
    plugin = NumpyPlugin(a)
    src = make_block_source(plugin, (x[:5], y[:5]), (x, y))
    block = src.compute_block(range(0, 5), range(0, 9))
    expect = plugin.test_factors(x[:5], y[:5]) @ plugin.train_factors(x, y).T
    np.testing.assert_allclose(block, expect, rtol=1e-6)
    fps = src.fingerprints()
    assert set(fps) == {"model", "backend", "test", "train"}
    assert len(fps["model"]) == 64
    assert json.loads(fps["backend"]) == plugin.influence_config()
    desc = src.describe()
    assert desc["kind"] == "model" and desc["backend"] == "NumpyPlugin"
    assert json.loads(json.dumps(desc)) == desc
    si = src.compute_diagonal(range(0, 9))
    np.testing.assert_allclose(
        si, np.einsum("ij,ij->i", plugin.test_factors(x, y), plugin.train_factors(x, y)), rtol=1e-6
    )


# ---------------------------------------------------------------------------------- memo


def test_memo_computes_each_factor_once(lsq: Any) -> None:
    model, test, train = lsq
    counting = Counting(model)
    src = make_block_source(counting, test, train)
    first = assemble(src, 4, 5)  # 3 x 5 grid
    assert len(counting.test_calls) == 3 and len(counting.train_calls) == 5
    second = assemble(src, 4, 5)
    assert len(counting.test_calls) == 3 and len(counting.train_calls) == 5
    np.testing.assert_array_equal(first, second)
    assert src.stats["test_factors"] == 3 and src.stats["train_factors"] == 5
    # a range inside a memoised one is served by slicing
    src.compute_block(range(1, 3), range(6, 9))
    assert len(counting.test_calls) == 3 and len(counting.train_calls) == 5
    # prefetch computes now, later reads reuse
    src2 = make_block_source(Counting(model), test, train)
    src2.prefetch(rows=range(0, 4), cols=range(0, 5))
    assert src2.stats["test_factors"] == 1 and src2.stats["train_factors"] == 1
    src2.compute_block(range(0, 4), range(0, 5))
    assert src2.stats["test_factors"] == 1 and src2.stats["train_factors"] == 1


def test_a_range_starting_in_a_memoised_one_computes_only_the_rest(lsq: Any) -> None:
    model, test, train = lsq
    counting = Counting(model)
    src = make_block_source(counting, test, train)
    src.prefetch(cols=range(0, 5))  # a tile sized on its first block column, say
    src.prefetch(cols=range(0, 20))  # then its column group
    assert counting.train_calls == [5, 15]
    reference = make_block_source(model, test, train)
    np.testing.assert_array_equal(
        src.compute_block(range(0, 4), range(0, 20)),
        reference.compute_block(range(0, 4), range(0, 20)),
    )
    assert counting.train_calls == [5, 15]  # the joined range is memoised


def test_memo_budget_too_small_recomputes(lsq: Any) -> None:
    model, test, train = lsq
    ref = assemble(make_block_source(model, test, train), 4, 5)
    counting = Counting(model)
    src = make_block_source(counting, test, train, factor_budget_bytes=0)
    np.testing.assert_array_equal(assemble(src, 4, 5), ref)
    assert len(counting.test_calls) == 15 and len(counting.train_calls) == 15
    assert src.memo_bytes == 0
    # room for about two factors (4 rows x 3 cols x 8 bytes = 96 B each): LRU eviction
    counting = Counting(model)
    src = make_block_source(counting, test, train, factor_budget_bytes=200)
    np.testing.assert_array_equal(assemble(src, 4, 5), ref)
    assert src.memo_bytes <= 200 and src.memo_evictions > 0
    assert 3 < len(counting.test_calls) + len(counting.train_calls) < 30


def test_pickle_drops_memo(lsq: Any) -> None:
    src = make_block_source(*lsq)
    block = src.compute_block(range(0, 4), range(0, 5))
    clone = pickle.loads(pickle.dumps(src))
    assert clone.memo_bytes == 0
    np.testing.assert_array_equal(clone.compute_block(range(0, 4), range(0, 5)), block)


def test_bad_budget(lsq: Any) -> None:
    with pytest.raises(ValueError, match="factor_budget_bytes"):
        make_block_source(*lsq, factor_budget_bytes=-1)


# ---------------------------------------------------------------------------------- fingerprints


def test_fingerprints_stable_and_sensitive(lsq: Any) -> None:
    model, test, train = lsq
    fp = make_block_source(model, test, train).fingerprints()
    assert set(fp) == {"model", "backend", "test", "train"}
    assert fp["backend"] == json.dumps(
        model.influence_config(), sort_keys=True, separators=(",", ":")
    )
    same = LinearLSQ(model.w.clone()).fit(*train)
    test_copy = (test[0].clone(), test[1].clone())
    assert make_block_source(same, test_copy, train).fingerprints() == fp
    other_w = LinearLSQ(model.w + 1e-3).fit(*train)
    diff = make_block_source(other_w, test, train).fingerprints()
    assert diff["model"] != fp["model"] and diff["backend"] == fp["backend"]
    other_reg = LinearLSQ(model.w, regularization=0.2).fit(*train)
    diff = make_block_source(other_reg, test, train).fingerprints()
    assert diff["backend"] != fp["backend"] and diff["model"] == fp["model"]
    x2 = test[0].clone()
    x2[3, 1] += 1.0
    diff = make_block_source(model, (x2, test[1]), train).fingerprints()
    assert diff["test"] != fp["test"] and diff["train"] == fp["train"]


# ---------------------------------------------------------------------------------- errors


def test_errors() -> None:
    train = lsq_data(5)
    with pytest.raises(TypeError, match="factorised protocol"):
        make_block_source(object(), train, train)
    with pytest.raises(TypeError, match="pyDVL"):
        make_block_source(nn.Linear(3, 1), train, train)
    with pytest.raises(ValueError, match=r"call \.fit\(train_data\) first"):
        make_block_source(FakePyDVL(None), train, train)
    model = LinearLSQ(torch.ones(3)).fit(*train)
    with pytest.raises(ValueError, match="empty"):
        make_block_source(model, (torch.zeros(0, 3), torch.zeros(0)), train)
    with pytest.raises(ValueError, match="empty"):
        make_block_source(model, train, (torch.zeros(0, 3), torch.zeros(0)))
    with pytest.raises(TypeError):
        make_block_source(model, "not data", train)

    class BadConfig(LinearLSQ):
        def influence_config(self) -> dict[str, Any]:
            return {"w": self.w}

    src = make_block_source(BadConfig(torch.ones(3)).fit(*train), train, train)
    with pytest.raises(TypeError, match="JSON-able"):
        src.fingerprints()

    class WrongRows(LinearLSQ):
        def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return super().test_factors(x, y)[:-1]

    src = make_block_source(WrongRows(torch.ones(3)).fit(*train), train, train)
    with pytest.raises(ValueError, match="one row per sample"):
        src.compute_block(range(0, 3), range(0, 3))


# ---------------------------------------------------------------------------------- pyDVL-like


def test_duck_typed_pydvl_model(lsq: Any) -> None:
    model, test, train = lsq
    fake = FakePyDVL(model)
    assert is_pydvl_model(fake) and not is_pydvl_model(model)
    src = make_block_source(fake, test, train)
    assert isinstance(src.adapter, PyDVLAdapter)
    ref = assemble(make_block_source(model, test, train), 11, 23)
    np.testing.assert_allclose(assemble(src, 4, 10), ref, rtol=1e-13)
    assert src.stats["test_factors"] == 3
    src_self = make_block_source(fake, train, train)
    full = assemble(src_self, 23, 23)
    np.testing.assert_allclose(src_self.compute_diagonal(range(0, 23)), np.diag(full), rtol=1e-13)
    fp = src.fingerprints()
    assert fp["model"] == model_fingerprint(fake.model, buffers=True)
    cfg = json.loads(fp["backend"])
    assert cfg["hyperparameters"]["regularization"] == 0.1
    assert cfg["model_parameters"] == fp["model"]
    desc = src.describe()
    assert desc["backend"] == "FakePyDVL" and json.loads(json.dumps(desc)) == desc
    fake2 = FakePyDVL(model, regularization=0.3)
    fake2.model.load_state_dict(fake.model.state_dict())
    fp2 = make_block_source(fake2, test, train).fingerprints()
    assert fp2["model"] == fp["model"] and fp2["backend"] != fp["backend"]


# ---------------------------------------------------------------------------------- real backend


def _mlp(seed: int) -> nn.Module:
    return tanh_mlp(3, 4, 2, seed=seed, double=False)


def _class_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return binary_data(n, 3, seed)


# torch.func's forward-mode AD loads decompositions through torch.jit.script once per process,
# which warns in torch 2.13 (not ours to fix here).
# an untrained network: H + 0.1*Id is indefinite (solved exactly all the same)
@pytest.mark.filterwarnings("ignore::infl_array.torch.IndefiniteHessianWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_direct_influence_backend() -> None:
    from infl_array.torch import DirectInfluence

    ce = torch.nn.functional.cross_entropy
    train, test = _class_data(20, 0), _class_data(7, 1)
    model = _mlp(0)
    infl = DirectInfluence(model, ce, regularization=0.1).fit(train)
    src = make_block_source(infl, test, train)
    block = assemble(src, 3, 8)
    expect = (infl.test_factors(*test) @ infl.train_factors(*train).T).numpy()
    np.testing.assert_allclose(block, expect, rtol=1e-10, atol=1e-14)

    # the definition, with an explicit Hessian by autograd over the flat parameters
    params = [p.detach().clone() for p in model.parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.reshape(-1) for p in params])

    def loss_at(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ps, i = [], 0
        for s in shapes:
            k = int(torch.tensor(s).prod())
            ps.append(flat[i : i + k].reshape(s))
            i += k
        h = torch.tanh(x @ ps[0].T + ps[1])
        return ce(h @ ps[2].T + ps[3], y)

    hess = torch.autograd.functional.hessian(lambda f: loss_at(f, *train), flat0)
    a_inv = torch.linalg.inv(hess + 0.1 * torch.eye(len(flat0)))

    def grad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.jacobian(lambda f: loss_at(f, x, y), flat0)

    for i in (0, 4):
        gi = grad(test[0][i : i + 1], test[1][i : i + 1])
        for j in (0, 13, 19):
            gj = grad(train[0][j : j + 1], train[1][j : j + 1])
            assert block[i, j] == pytest.approx(float(gi @ a_inv @ gj), rel=1e-8, abs=1e-12)

    # fingerprints: an equal model in a new object is the same; other parameters are not
    fp = src.fingerprints()
    infl_same = DirectInfluence(_mlp(0), ce, regularization=0.1).fit(_class_data(20, 0))
    assert make_block_source(infl_same, _class_data(7, 1), train).fingerprints() == fp
    infl_other = DirectInfluence(_mlp(1), ce, regularization=0.1).fit(train)
    assert make_block_source(infl_other, test, train).fingerprints()["model"] != fp["model"]
    infl_reg = DirectInfluence(_mlp(0), ce, regularization=0.2).fit(train)
    assert make_block_source(infl_reg, test, train).fingerprints()["backend"] != fp["backend"]

    # self-influence is the diagonal of the train x train matrix
    src_tt = make_block_source(infl, train, train)
    np.testing.assert_allclose(
        src_tt.compute_diagonal(range(0, 20)), np.diag(assemble(src_tt, 6, 6)), rtol=1e-10
    )

    with pytest.raises(ValueError, match=r"call \.fit\(train_data\) first"):
        make_block_source(DirectInfluence(_mlp(0), ce, regularization=0.1), test, train)
