"""A store records what computing its values found (issue 13: indefinite Hessians), shown by
``repr``, ``arr.notes`` and ``infl-array info``, in this process and in any later one."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from models import tanh_mlp, three_class_data
from torch import nn

import infl_array as ia
from infl_array.storage.notes import read_notes, write_notes
from infl_array.torch import DirectInfluence, IndefiniteHessianWarning

ROOT = Path(__file__).resolve().parents[2]


def _problem(seed: int) -> tuple[nn.Module, Any, Any]:
    model = tanh_mlp(5, 6, 3, seed=seed).eval()
    x, y = three_class_data(30, 5, seed)
    return model, (x[:8], y[:8]), (x, y)


@pytest.fixture(scope="module")
def indefinite() -> dict[str, Any]:
    """An untrained network and a regularization too small for its indefinite Hessian."""
    model, test, train = _problem(3)
    lowest = float(
        torch.linalg.eigvalsh(DirectInfluence(model, F.cross_entropy, 0.0).fit(train).hessian())[0]
    )
    assert lowest < -1e-3
    return {"model": model, "test": test, "train": train, "lam": -lowest / 10}


def _info(store: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "infl_array.cli", "info", str(store)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_indefinite_fit_is_recorded_and_shown(tmp_path: Path, indefinite) -> None:
    p, store = indefinite, tmp_path / "s"
    inf = DirectInfluence(p["model"], F.cross_entropy, p["lam"]).fit(p["train"])
    arr = ia.InfluenceArray.create(
        store, inf, test=p["test"], train=p["train"], block_shape=(4, 10)
    )
    assert arr.notes == {} and "notes" not in repr(arr)  # nothing computed yet
    with pytest.warns(IndefiniteHessianWarning, match="smallest eigenvalue"):
        arr[0]
    message = inf.diagnostics()["not_positive_definite"]
    assert "smallest eigenvalue" in message and "Increase regularization" in message
    assert arr.notes == {"not_positive_definite": message}
    assert f"not_positive_definite: {message}" in repr(arr)
    # a later process, without the model
    reopened = ia.open(store)
    assert reopened.notes == {"not_positive_definite": message}
    assert "not_positive_definite" in repr(reopened)
    out = _info(store)
    assert f"not_positive_definite: {message}" in out
    assert json.loads(out[out.index("\n{") :])["notes"] == {"not_positive_definite": message}
    # recorded once: more blocks with the same finding write nothing new
    mtime = (store / "influence" / "notes" / "not_positive_definite.json").stat().st_mtime_ns
    arr.fill(progress=False)
    assert (
        store / "influence" / "notes" / "not_positive_definite.json"
    ).stat().st_mtime_ns == mtime


def test_a_positive_definite_fit_has_no_notes(tmp_path: Path) -> None:
    model, test, train = _problem(3)
    inf = DirectInfluence(model, F.cross_entropy, 10.0).fit(train)
    arr = ia.InfluenceArray.create(tmp_path / "s", inf, test=test, train=train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr.fill(progress=False)
        arr.self_influence()[:]
    assert arr.notes == {} and "notes" not in repr(arr)
    assert json.loads(_info(tmp_path / "s").split("\n", 1)[1])["notes"] == {}


def test_self_influence_records_the_notes_of_its_model(tmp_path: Path, indefinite) -> None:
    p = indefinite
    inf = DirectInfluence(p["model"], F.cross_entropy, p["lam"]).fit(p["train"])
    arr = ia.InfluenceArray.create(tmp_path / "s", inf, test=p["test"], train=p["train"])
    with pytest.warns(IndefiniteHessianWarning):
        arr.self_influence()[:]
    assert list(arr.notes) == ["not_positive_definite"]


@pytest.mark.filterwarnings("ignore::infl_array.torch.IndefiniteHessianWarning")
def test_fills_in_worker_processes_record_the_notes(tmp_path: Path, indefinite) -> None:
    p = indefinite
    inf = DirectInfluence(p["model"], F.cross_entropy, p["lam"]).fit(p["train"])
    arr = ia.InfluenceArray.create(
        tmp_path / "s", inf, test=p["test"], train=p["train"], block_shape=(4, 10)
    )
    arr.fill(progress=False, workers=2)
    assert inf.is_prepared  # prepared once before the model went to the workers
    assert list(ia.open(tmp_path / "s").notes) == ["not_positive_definite"]
    ref = DirectInfluence(p["model"], F.cross_entropy, p["lam"]).fit(p["train"])
    want = ref.influences(*p["test"], *p["train"]).numpy().astype(np.float32)
    np.testing.assert_allclose(np.asarray(arr), want, rtol=1e-5, atol=1e-6)


def test_note_keys_are_short_names(tmp_path: Path) -> None:
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", lambda r, c: np.ones((len(r), len(c))), shape=(3, 4)
    )
    arr.fill(progress=False)
    assert arr.notes == {}  # a function reports nothing
    zstore = zarr.storage.LocalStore(tmp_path / "s")  # the store as plain zarr sees it
    with pytest.raises(ValueError, match=r"short name.*got '\.\./x'"):
        write_notes(zstore, {"../x": "m"})
    write_notes(zstore, {"checked": "by hand"})
    assert read_notes(zstore) == {"checked": "by hand"}
    assert ia.open(tmp_path / "s").notes == {"checked": "by hand"}
