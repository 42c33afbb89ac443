"""pyDVL 0.10 compatibility: a fitted pyDVL model backs an InfluenceArray like our backends do.

Runs only in the pyDVL venv (numpy<2), through ``bash .ci/pydvl_env.sh``; the file name keeps
the main suite (``pytest tests``) from collecting it. Everything is float64 on a seeded small
MLP trained for a few steps, so pyDVL's and our exact solvers agree to rounding and CG to its
tolerance. The measured maximum relative differences are printed (``-s`` shows them) and
written to ``$PYDVL_COMPAT_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydvl.influence import InfluenceMode
from pydvl.influence.torch import CgInfluence as PyDVLCg
from pydvl.influence.torch import DirectInfluence as PyDVLDirect
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infl_array as ia
from infl_array.torch import DirectInfluence
from infl_array.torch.source.source import make_block_source

pytestmark = [
    # torch.func's forward-mode AD loads decompositions through torch.jit.script (deprecated)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydvl"),
    pytest.mark.filterwarnings("ignore::FutureWarning:pydvl"),
]

REG = 0.1
N_TRAIN, N_TEST, BATCH = 60, 15, 20  # equal batches: pyDVL's CG averages batch Hessians
CE = torch.nn.functional.cross_entropy
REPORT: dict[str, float] = {}


def _record(name: str, value: float) -> None:
    REPORT[name] = value
    print(f"{name}: {value:.3e}")
    path = os.environ.get("PYDVL_COMPAT_REPORT")
    if path:  # several check files share the report: merge into what is there
        report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        report.update(REPORT)
        Path(path).write_text(json.dumps(report, indent=1, sort_keys=True))


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _mlp(train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        CE(model(train[0]), train[1]).backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def _copy(model: nn.Module) -> nn.Module:
    clone = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    clone.load_state_dict(model.state_dict())
    return clone.eval()


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    train, test = _data(N_TRAIN, 0), _data(N_TEST, 1)
    model = _mlp(train)
    loader = DataLoader(TensorDataset(*train), batch_size=BATCH)
    ours = DirectInfluence(model, CE, regularization=REG).fit(loader)
    reference = make_block_source(ours, test, train)
    full = reference.compute_block(range(N_TEST), range(N_TRAIN))
    return {"train": train, "test": test, "model": model, "loader": loader, "full": full}


def _assemble(src: Any, br: int, bc: int) -> np.ndarray:
    out = np.empty((src.n_test, src.n_train))
    for r in range(0, src.n_test, br):
        for c in range(0, src.n_train, bc):
            rr, cc = range(r, min(r + br, src.n_test)), range(c, min(c + bc, src.n_train))
            out[r : rr.stop, c : cc.stop] = src.compute_block(rr, cc)
    return out


def _pydvl_direct(model: nn.Module, loader: DataLoader, reg: float = REG) -> Any:
    return PyDVLDirect(model, CE, regularization=reg).fit(loader)


def _pydvl_cg(model: nn.Module, loader: DataLoader) -> Any:
    cg = PyDVLCg(
        model,
        CE,
        regularization=REG,
        rtol=1e-10,
        atol=1e-12,
        maxiter=200,
        solve_simultaneously=True,
    )
    return cg.fit(loader)


def test_pydvl_direct_matches_ours(setup: dict[str, Any]) -> None:
    pm = _pydvl_direct(setup["model"], setup["loader"])
    src = make_block_source(pm, setup["test"], setup["loader"])
    got = _assemble(src, 4, 16)
    d = rel_diff(got, setup["full"])
    _record("direct: pyDVL vs infl_array max rel diff", d)
    assert d < 1e-9
    # the adapter gives what pyDVL itself gives
    x, y = setup["test"]
    own = pm.influences(x, y, *setup["train"], mode=InfluenceMode.Up).numpy()
    d_own = rel_diff(got, own)
    _record("direct: adapter vs pyDVL influences() max rel diff", d_own)
    assert d_own < 1e-12
    # self-influence: the diagonal of pyDVL's train x train matrix
    src_tt = make_block_source(pm, setup["train"], setup["train"])
    tt = pm.influences(*setup["train"], *setup["train"], mode=InfluenceMode.Up).numpy()
    np.testing.assert_allclose(src_tt.compute_diagonal(range(N_TRAIN)), np.diag(tt), rtol=1e-10)
    fps = src.fingerprints()
    assert set(fps) == {"model", "backend", "test", "train"}
    # pyDVL keeps one regularization per parameter block; BlockMode.FULL has one, named ""
    assert json.loads(fps["backend"])["hyperparameters"]["regularization"] == {"": REG}
    # an equal model refitted in new objects has the same fingerprints; another reg does not
    pm2 = _pydvl_direct(_copy(setup["model"]), setup["loader"])
    assert make_block_source(pm2, setup["test"], setup["loader"]).fingerprints() == fps
    pm3 = _pydvl_direct(setup["model"], setup["loader"], reg=0.2)
    fps3 = make_block_source(pm3, setup["test"], setup["loader"]).fingerprints()
    assert fps3["backend"] != fps["backend"] and fps3["model"] == fps["model"]


def test_pydvl_cg_matches_ours(setup: dict[str, Any]) -> None:
    pm = _pydvl_cg(setup["model"], setup["loader"])
    src = make_block_source(pm, setup["test"], setup["train"])
    d = rel_diff(_assemble(src, 7, 25), setup["full"])
    _record("cg: pyDVL vs infl_array max rel diff", d)
    assert d < 1e-5


def test_unfitted_pydvl_model(setup: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"call \.fit\(train_data\) first"):
        make_block_source(PyDVLDirect(setup["model"], CE, REG), setup["test"], setup["train"])


@pytest.mark.parametrize("kind", ["direct", "cg"])
def test_store_roundtrip(
    setup: dict[str, Any], tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make = _pydvl_direct if kind == "direct" else _pydvl_cg
    pm = make(setup["model"], setup["loader"])
    store = tmp_path / "store"
    arr = ia.InfluenceArray.create(
        store,
        pm,
        test=setup["test"],
        train=setup["loader"],
        block_shape=(4, 16),
        dtype="float64",
    )
    values = np.asarray(arr)
    d = rel_diff(values, setup["full"])
    _record(f"{kind}: pyDVL store vs infl_array max rel diff", d)
    assert d < (1e-9 if kind == "direct" else 1e-5)
    assert np.asarray(arr.computed).all()

    # reopen with an equal model in new objects: the store is reused, nothing is computed
    pm2 = make(_copy(setup["model"]), setup["loader"])
    calls: list[int] = []
    cls = type(pm2)
    original = cls.influence_factors

    def counting(self: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return original(self, x, y)

    monkeypatch.setattr(cls, "influence_factors", counting)
    again = ia.open(store, pm2, test=setup["test"], train=setup["loader"])
    np.testing.assert_array_equal(np.asarray(again), values)
    np.testing.assert_array_equal(again[3:9, ::7], values[3:9, ::7])
    assert calls == []
    monkeypatch.undo()

    # a different model or data is refused
    changed = _copy(setup["model"])
    with torch.no_grad():
        changed[0].bias.add_(1e-3)
    with pytest.raises(ia.StaleCacheError) as err:
        ia.open(store, make(changed, setup["loader"]), test=setup["test"], train=setup["loader"])
    assert "model" in err.value.differences
    x2, y2 = setup["test"][0].clone(), setup["test"][1]
    x2[0, 0] += 1.0
    with pytest.raises(ia.StaleCacheError) as err:
        ia.open(store, pm2, test=(x2, y2), train=setup["loader"])
    assert err.value.differences == ["test"]


def test_a_pydvl_backed_array_grows_by_appends(setup: dict[str, Any], tmp_path: Path) -> None:
    """append_train / append_test of a pyDVL-backed array: the grown matrix is pyDVL's own
    influences over the joined data (the fit stays), the top-k rows update, and the store
    reopens with the grown data and reports clean."""
    pm = _pydvl_direct(setup["model"], setup["loader"])
    (xt, yt), (x, y) = setup["test"], setup["train"]
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        pm,
        test=(xt[:10], yt[:10]),
        train=(x[:37], y[:37]),
        block_shape=(4, 8),
        dtype="float64",
    )
    arr.fill(progress=False)
    arr.top_k_array(3).fill(progress=False)
    assert str(arr.append_train((x[37:], y[37:]))) == "train segment 1 (37:60)"
    assert str(arr.append_test((xt[10:], yt[10:]))) == "test segment 1 (10:15)"
    own = pm.influences(xt, yt, x, y, mode=InfluenceMode.Up).numpy()
    got = arr[:]
    d = rel_diff(got, own)
    _record("append: grown pyDVL-backed array vs pyDVL influences() max rel diff", d)
    assert got.shape == (N_TEST, N_TRAIN) and d < 1e-12
    order = np.argsort(-got, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(arr.top_k_array(3).indices[:], order)
    again = ia.open(tmp_path / "s", pm, test=(xt, yt), train=(x, y))
    np.testing.assert_array_equal(again[:], got)
    changed = x.clone()
    changed[40] += 1
    with pytest.raises(ia.StaleCacheError, match=r"train segment 1 \(37:60\)"):
        ia.open(tmp_path / "s", pm, test=(xt, yt), train=(changed, y))
    assert again.store_report().ok and again.verify() == []


def test_import_under_numpy1() -> None:
    import numpy

    assert numpy.__version__.startswith("1.")
    assert ia.InfluenceArray is not None
