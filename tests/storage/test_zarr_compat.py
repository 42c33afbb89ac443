"""The store calls of infl_array.storage.zarr_compat: on a plain local directory they run as
file operations in the calling thread, with the same results as through zarr's store; a
subclass of zarr's LocalStore (a wrapped or instrumented store) goes through its methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.storage import LocalStore

from infl_array.storage.zarr_compat import (
    delete_key,
    key_exists,
    read_key,
    write_key,
    write_key_if_absent,
)


class CountedStore(LocalStore):
    """A LocalStore subclass that counts the calls it receives."""

    calls: list[str]

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("get")
        return await super().get(key, *args, **kwargs)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        self.calls.append("set_if_not_exists")
        await super().set_if_not_exists(key, value)


def _open(store: LocalStore) -> LocalStore:
    zarr.open_group(store, mode="r" if store.read_only else "a")  # as the package's stores are
    return store


@pytest.mark.parametrize("kind", [LocalStore, CountedStore])
def test_store_calls_behave_alike_on_local_directories(tmp_path: Path, kind: type) -> None:
    store = kind(tmp_path)
    store.calls = []
    _open(store)
    store.calls = []
    key = "influence/claims/u1x1.0.0"
    assert read_key(store, key) is None and not key_exists(store, key)
    write_key_if_absent(store, key, b"first")
    write_key_if_absent(store, key, b"second")  # exists: kept as it is
    assert read_key(store, key) == b"first" and key_exists(store, key)
    write_key(store, key, b"third")
    assert read_key(store, key) == b"third"
    assert (tmp_path / key).read_bytes() == b"third"
    delete_key(store, key)
    delete_key(store, key)  # absent: nothing happens
    assert read_key(store, key) is None and not (tmp_path / key).exists()
    assert not list((tmp_path / "influence" / "claims").glob("*.partial"))
    if isinstance(store, CountedStore):  # a subclass's own methods were called
        assert store.calls.count("get") == 4 and store.calls.count("set_if_not_exists") == 2


def test_a_read_only_local_store_refuses_writes(tmp_path: Path) -> None:
    _open(LocalStore(tmp_path))
    store = _open(LocalStore(tmp_path, read_only=True))
    with pytest.raises(ValueError, match="read-only"):
        write_key(store, "k", b"x")
    assert read_key(store, "k") is None
