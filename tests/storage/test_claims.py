"""Claims under failed requests (storage/claims.py, issue 21): a release or a claim whose request
fails never leaves a claim refreshed, never fails the caller for a unit that is done, and never
makes this process wait on a claim it left behind; other processes wait at most ``ttl_s``."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from zarr.storage import LocalStore

from infl_array.storage.claims import ClaimBook
from infl_array.storage.zarr_compat import read_key

PREFIX = "influence/claims/"


class FailingStore(LocalStore):
    """A local store whose claim deletes (``deletes``) or reads (``reads``) fail while set, as
    an S3 server answering 500 would; set on the class (zarr makes new instances)."""

    deletes = False
    reads = False

    async def delete(self, key: str) -> None:
        if FailingStore.deletes:
            raise OSError(errno.EREMOTEIO, "Internal Server Error")
        await super().delete(key)

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if FailingStore.reads:
            raise OSError(errno.ETIMEDOUT, "Read timeout on endpoint URL")
        return await super().get(key, *args, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    yield FailingStore(tmp_path)
    FailingStore.deletes = FailingStore.reads = False


def _expires(store: Any, name: str) -> float:
    return float(json.loads(read_key(store, PREFIX + name) or b"")["expires"])


def test_close_stops_refreshing_even_when_every_release_fails(store: Any) -> None:
    book = ClaimBook(store, PREFIX, ttl_s=0.2)
    assert book.try_claim("a") and book.try_claim("b")
    FailingStore.deletes = True
    book.release("a")  # not raised: the unit is done, the claim expires
    book.close()
    assert book._heartbeat is not None and not book._heartbeat.is_alive()
    left = {"a": _expires(store, "a"), "b": _expires(store, "b")}  # the deletes failed
    time.sleep(0.3)  # past a refresh period: nothing rewrites them
    assert {"a": _expires(store, "a"), "b": _expires(store, "b")} == left
    FailingStore.deletes = False


def test_close_deletes_a_claim_whose_release_failed_once_requests_succeed(store: Any) -> None:
    book = ClaimBook(store, PREFIX)
    assert book.try_claim("a")
    FailingStore.deletes = True
    book.release("a")
    FailingStore.deletes = False
    assert read_key(store, PREFIX + "a") is not None
    book.close()
    assert read_key(store, PREFIX + "a") is None


def _claimed_in_another_process(path: Path, name: str, at: float) -> bool:
    """Whether a filler process of its own, its clock at ``at``, claims ``name``."""
    code = (
        "import sys; from zarr.storage import LocalStore; "
        "from infl_array.storage.claims import ClaimBook; "
        f"book = ClaimBook(LocalStore({str(path)!r}), {PREFIX!r}, clock=lambda: {at!r}); "
        f"print(book.try_claim({name!r})); book.close()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip() == "True"


def test_a_claim_this_process_left_is_taken_over_here_at_once_elsewhere_on_expiry(
    store: Any, tmp_path: Path
) -> None:
    book = ClaimBook(store, PREFIX)
    assert book.try_claim("a")
    FailingStore.deletes = True
    book.close()
    FailingStore.deletes = False
    expires = _expires(store, "a")
    # another process: held while the claim lives (this process is alive), free once expired
    assert not _claimed_in_another_process(tmp_path, "a", at=expires - 1.0)
    here = ClaimBook(store, PREFIX)
    assert here.try_claim("a")  # this process knows none of its books holds it
    FailingStore.deletes = True
    here.close()
    FailingStore.deletes = False
    assert _claimed_in_another_process(tmp_path, "a", at=_expires(store, "a") + 1.0)
    assert read_key(store, PREFIX + "a") is None  # taken over, and released by its taker


def test_a_claim_another_book_of_this_process_holds_is_respected(store: Any) -> None:
    first, second = ClaimBook(store, PREFIX), ClaimBook(store, PREFIX)
    assert first.try_claim("a")
    assert not second.try_claim("a")  # a fill in another thread of this process computes it
    first.close()
    assert second.try_claim("a")
    second.close()


def test_a_claim_whose_read_back_failed_is_deleted_or_abandoned(store: Any) -> None:
    book = ClaimBook(store, PREFIX)
    FailingStore.reads = True
    with pytest.raises(OSError, match="Read timeout"):
        book.try_claim("a")  # stored, but the read-back failed: the caller cannot know
    FailingStore.reads = False
    assert "a" not in book._held
    assert read_key(store, PREFIX + "a") is not None  # the delete needs a read: it failed too
    other = ClaimBook(store, PREFIX)
    assert other.try_claim("a")  # abandoned by this process: not waited on
    other.close()
    book.close()


def test_a_unit_a_live_owner_holds_past_max_wait_is_taken_over_with_a_warning(
    store: Any,
) -> None:
    owner = ClaimBook(store, PREFIX)  # alive and refreshing, but its unit never gets done
    assert owner.try_claim("a")
    waiter = ClaimBook(store, PREFIX, max_wait_s=0.3)
    assert waiter.max_wait_s == 0.3 and ClaimBook(store, PREFIX, ttl_s=2.0).max_wait_s == 20.0
    assert not waiter.try_claim("a")  # the wait starts
    assert not waiter.try_claim("a")
    time.sleep(0.35)
    with pytest.warns(RuntimeWarning, match=r"held by the live filler .* for over 0.3 s"):
        assert waiter.try_claim("a")
    waiter.close()
    owner.close()
