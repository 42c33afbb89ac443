"""A failed storage request (an S3 500 or 503, a timeout, an I/O error) is named as such (issue
21): an ``OSError`` naming the store and what was being done, never a corrupt block to
repair or a damaged store to recreate, and the stored data is left as it was."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import bounded
from zarr.storage import LocalStore

import infl_array as ia


def _fn(rows: range, cols: range) -> np.ndarray:
    return np.add.outer(np.asarray(rows) * 100.0, np.asarray(cols))


class FlakyStore(LocalStore):
    """A local store whose reads of keys containing ``failing`` raise ``EREMOTEIO``.

    ``failing`` is set on the class: zarr makes new instances (``with_read_only``).
    """

    failing: str | None = None

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if self.failing is not None and self.failing in key:
            raise OSError(errno.EREMOTEIO, "Internal Server Error")
        return await super().get(key, *args, **kwargs)

    async def exists(self, key: str) -> bool:
        if self.failing is not None and self.failing in key:
            raise OSError(errno.EREMOTEIO, "Internal Server Error")
        return await super().exists(key)


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[FlakyStore]:
    path = tmp_path / "s"
    ia.InfluenceArray.from_function(path, _fn, shape=(6, 8), block_shape=(3, 4)).fill(
        progress=False
    )
    yield FlakyStore(path)
    FlakyStore.failing = None


def test_a_failed_block_read_is_a_named_oserror_not_a_corrupt_block(flaky: FlakyStore) -> None:
    arr = ia.open(flaky)
    FlakyStore.failing = "influence/c/1/0"
    for read in (lambda: arr.read_block((1, 0)), lambda: arr[3:5, 1:3], lambda: arr.verify()):
        with pytest.raises(OSError, match=r"could not .*the storage failed the request") as info:
            read()
        assert not isinstance(info.value, ia.CorruptBlockError)
        assert info.value.errno == errno.EREMOTEIO and "retry" in str(info.value)
        assert str(flaky.root) in str(info.value)
    FlakyStore.failing = None
    assert arr.verify() == [] and ia.open(flaky).store_report().ok
    np.testing.assert_array_equal(np.asarray(arr), _fn(range(6), range(8)))


@pytest.mark.parametrize("key", ["zarr.json", "influence/zarr.json"])
def test_a_failed_metadata_read_is_a_named_oserror_never_a_store_to_recreate(
    flaky: FlakyStore, key: str
) -> None:
    FlakyStore.failing = key
    with pytest.raises(OSError, match=r"could not .*the storage failed the request") as info:
        ia.open(flaky)
    assert not isinstance(info.value, ia.NotAStoreError)
    assert "overwrite=True" not in str(info.value)
    FlakyStore.failing = None
    np.testing.assert_array_equal(np.asarray(ia.open(flaky)), _fn(range(6), range(8)))


class LateFailingClaims(LocalStore):
    """A local store whose claim writes are carried out, then reported failed (``late``): a
    request that timed out on the client after the server stored it."""

    late = False

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        await super().set_if_not_exists(key, value)
        if LateFailingClaims.late and "/claims/" in key:
            raise OSError(errno.ETIMEDOUT, "Read timeout on endpoint URL")


def test_a_claim_stored_by_a_failed_request_does_not_hold_its_unit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    arr = ia.InfluenceArray.from_function(
        LateFailingClaims(path), _fn, shape=(6, 8), block_shape=(3, 4)
    )
    LateFailingClaims.late = True
    try:
        with pytest.raises(OSError, match="Read timeout"):
            arr.fill(progress=False)
    finally:
        LateFailingClaims.late = False
    assert not list(path.rglob("claims/*"))  # the claim the server kept is gone
    # the next fill in this process does not wait a claim lifetime on its own claim
    filled, seconds = bounded(
        lambda: ia.open(LateFailingClaims(path), fn=_fn).fill(progress=False), 20
    )
    assert filled == 4 and seconds < 20


class FailingClaimDeletes(LocalStore):
    """A local store whose claim deletes fail while ``failing`` is set: a release whose request
    an S3 server answered with an error."""

    failing = False

    async def delete(self, key: str) -> None:
        if FailingClaimDeletes.failing and "/claims/" in key:
            raise OSError(errno.EREMOTEIO, "Internal Server Error")
        await super().delete(key)


def test_a_failed_claim_release_neither_fails_the_fill_nor_holds_its_unit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    arr = ia.InfluenceArray.from_function(
        FailingClaimDeletes(path), _fn, shape=(6, 8), block_shape=(3, 4)
    )
    FailingClaimDeletes.failing = True
    try:  # the blocks are stored: a claim left behind is not the fill's failure
        assert arr.fill(progress=False) == 4
    finally:
        FailingClaimDeletes.failing = False
    assert list(path.rglob("claims/*"))  # the server kept the claims it failed to delete
    np.testing.assert_array_equal(np.asarray(ia.open(path)), _fn(range(6), range(8)))
    # a new fill in this process does not wait on the claims this process abandoned (they are
    # no longer refreshed, and taken over at once here)
    for chunk in (path / "influence" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    filled, seconds = bounded(
        lambda: ia.open(FailingClaimDeletes(path), fn=_fn).fill(progress=False), 20
    )
    assert filled == 4 and seconds < 20
    assert not list(path.rglob("claims/*"))
