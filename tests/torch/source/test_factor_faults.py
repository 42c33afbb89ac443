"""Damaged factor chunks never make a read or a fill wait forever (issue 21): each is
recomputed and replaced, and a wait on another filler's claim ends with that claim."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import LoggedFactors, bounded, indexed_data, logged_calls

import infl_array as ia
from infl_array.storage.factors import FactorStore
from infl_array.storage.store import InfluenceStore
from infl_array.storage.zarr_compat import write_key

N_TEST, N_TRAIN, BLOCK = 12, 20, (4, 5)
BOUND_S = 60.0
"""A read or fill that has not returned after this long is taken to hang."""

DAMAGE = {
    "truncate-half": lambda b: b[: len(b) // 2],
    "truncate-empty": lambda b: b"",
    "garbage-short": lambda b: b"\x00garbage",
}


def data() -> tuple[Any, Any]:
    return indexed_data(N_TEST, seed=1), indexed_data(N_TRAIN, seed=2)


def expected(model: LoggedFactors) -> np.ndarray:
    test, train = data()
    return np.asarray(model.test_factors(*test) @ model.train_factors(*train).T)


def partly_filled(tmp_path: Path) -> tuple[Path, LoggedFactors]:
    """A store holding every factor block and only the matrix blocks of row 0 and column 0."""
    store, model = tmp_path / "s", LoggedFactors(str(tmp_path / "setup.log"))
    test, train = data()
    arr = ia.InfluenceArray.create(
        store, model, test=test, train=train, block_shape=BLOCK, dtype="float64"
    )
    arr[:4, :], arr[:, :5]  # factors of every block of both sides; matrix row 0, column 0
    assert (store / "factors" / "train" / "c" / "3" / "0").exists()
    assert (store / "factors" / "test" / "c" / "2" / "0").exists()
    return store, model


def damage(store: Path, side: str, b: int, how: str) -> None:
    path = store / "factors" / side / "c" / str(b) / "0"
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def reopen(store: Path, log: Path) -> ia.InfluenceArray:
    test, train = data()
    return ia.open(store, LoggedFactors(str(log)), test=test, train=train)


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("op", ["read", "fill"])
def test_damaged_factor_chunks_are_recomputed_by_reads_and_fills(
    tmp_path: Path, how: str, op: str
) -> None:
    store, model = partly_filled(tmp_path)
    damage(store, "train", 1, how)
    damage(store, "test", 2, how)
    log = tmp_path / "after.log"
    arr = reopen(store, log)
    if op == "read":
        got = bounded(lambda: arr[:], BOUND_S)[0]
    else:
        bounded(lambda: arr.fill(progress=False), BOUND_S)
        got = arr[:]
    np.testing.assert_allclose(got, expected(model), rtol=1e-12)
    # exactly the damaged blocks were computed again, and their chunks replaced
    assert sorted((k, a, b) for k, a, b, _ in logged_calls(str(log))) == [
        ("test", 8, 12),
        ("train", 5, 10),
    ]
    factors = FactorStore(InfluenceStore.open(store))
    assert factors.get("train", 1) is not None and factors.get("test", 2) is not None


def plant_claim(store: Path, name: str, owner: str, expires_in: float) -> None:
    zstore = InfluenceStore.open(store).matrix.zarr_store
    content = json.dumps({"owner": owner, "expires": time.time() + expires_in}).encode()
    write_key(zstore, f"influence/claims/{name}", content)


def test_a_wait_on_a_live_claim_of_a_damaged_chunk_ends_when_the_claim_expires(
    tmp_path: Path,
) -> None:
    store, model = partly_filled(tmp_path)
    damage(store, "train", 2, "truncate-half")
    plant_claim(store, "factors.train.2", "another-machine:1:x", expires_in=1.0)
    arr = reopen(store, tmp_path / "after.log")
    got, seconds = bounded(lambda: arr[4:8, 10:15], BOUND_S)
    np.testing.assert_allclose(got, expected(model)[4:8, 10:15], rtol=1e-12)
    assert 0.5 < seconds < BOUND_S  # it waited for the live owner, then took over
