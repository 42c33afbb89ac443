"""The cache machine (:mod:`infl_array.engine.keeper`): memo -> store -> claim -> compute, with
damaged chunks recomputed and every wait ended by its claim (issue 21's hang)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import bounded

from infl_array.engine.keeper import BlockKeeper, Presence
from infl_array.errors import CorruptBlockError

BOUND_S = 20.0
"""A call that has not returned after this long is taken to hang."""


class DictShelf:
    """An in-memory shelf: ``chunks[key]`` holds values, or None for a damaged chunk."""

    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        self.chunks: dict[int, np.ndarray | None] = {}
        self.holders: dict[int, str] = {}  # claims: key -> owner
        self.writes: list[int] = []
        self.lock = threading.Lock()

    def listed(self, keys: Any) -> set[int]:
        return {k for k in keys if k in self.chunks}

    def read(self, key: int) -> np.ndarray:
        values = self.chunks[key]
        if values is None:
            raise CorruptBlockError((key, 0), f"block {key} of the test shelf is damaged")
        return values

    def write_many(self, keys: list[int], values: list[np.ndarray]) -> bool:
        for key, v in zip(keys, values, strict=True):
            self.chunks[key] = v
            self.writes.append(key)
        return True

    def claim(self, key: int, owner: str = "me") -> bool:
        with self.lock:
            if self.holders.get(key, owner) != owner:
                return False
            self.holders[key] = owner
            return True

    def release(self, key: int) -> None:
        with self.lock:
            if self.holders.get(key) == "me":
                del self.holders[key]


class DictMemo:
    def __init__(self) -> None:
        self.values: dict[int, np.ndarray] = {}

    def get(self, key: int) -> np.ndarray | None:
        return self.values.get(key)

    def put(self, key: int, value: np.ndarray) -> None:
        self.values[key] = value


def value(key: int) -> np.ndarray:
    return np.full((2, 3), float(key))


def keeper(shelf: DictShelf, calls: list[list[int]]) -> BlockKeeper[int, np.ndarray]:
    def compute(keys: list[int]) -> list[np.ndarray]:
        calls.append(list(keys))
        return [value(k) for k in keys]

    return BlockKeeper(shelf, DictMemo(), compute)


def within_bound(fn: Callable[[], Any]) -> Any:
    return bounded(fn, BOUND_S)[0]


def test_fetch_goes_memo_then_store_then_compute_in_one_call() -> None:
    shelf, calls = DictShelf(), []
    shelf.chunks[1] = value(1)
    k = keeper(shelf, calls)
    got = k.fetch([0, 1, 2, 3])
    assert [g[0, 0] for g in got] == [0, 1, 2, 3]
    assert calls == [[0, 2, 3]] and shelf.writes == [0, 2, 3] and not shelf.holders
    assert k.fetch([0, 1, 2, 3])[3] is got[3] and calls == [[0, 2, 3]]  # memo
    assert k.known == {0, 1, 2, 3}


def test_a_damaged_chunk_is_recomputed_and_replaced_not_waited_for() -> None:
    shelf, calls = DictShelf(), []
    shelf.chunks.update({0: value(0), 1: None})  # block 1: present and damaged
    k = keeper(shelf, calls)
    assert k.look(1) is Presence.DAMAGED and k.look(0) is Presence.VALID
    assert k.look(5) is Presence.MISSING
    got = within_bound(lambda: k.fetch([0, 1]))
    assert got[1][0, 0] == 1 and calls == [[1]] and shelf.writes == [1]
    assert k.look(1) is Presence.VALID and not shelf.holders


def test_a_damaged_chunk_without_a_compute_step_raises_naming_it() -> None:
    shelf = DictShelf()
    shelf.chunks[0] = None
    k: BlockKeeper[int, np.ndarray] = BlockKeeper(shelf, DictMemo())
    with pytest.raises(CorruptBlockError, match="block 0 of the test shelf"):
        within_bound(lambda: k.fetch([0]))


def test_a_block_held_by_a_live_owner_is_read_once_it_stores_it() -> None:
    shelf, calls = DictShelf(), []
    shelf.holders[2] = "other"
    k = keeper(shelf, calls)

    def other_finishes() -> None:
        time.sleep(0.3)
        shelf.chunks[2] = value(2) * 10  # what the owner computed
        del shelf.holders[2]

    threading.Thread(target=other_finishes, daemon=True).start()
    got = within_bound(lambda: k.fetch([1, 2]))
    assert got[1][0, 0] == 20 and calls == [[1]]


def test_a_wait_ends_when_the_claim_goes_without_a_valid_block() -> None:
    shelf, calls = DictShelf(), []
    shelf.chunks[0] = None  # damaged, and claimed by another filler that then gives up
    shelf.holders[0] = "other"
    k = keeper(shelf, calls)

    def other_gives_up() -> None:
        time.sleep(0.3)
        del shelf.holders[0]

    threading.Thread(target=other_gives_up, daemon=True).start()
    got = within_bound(lambda: k.fetch([0]))
    assert got[0][0, 0] == 0 and calls == [[0]] and k.look(0) is Presence.VALID


def test_unshared_shelves_are_not_claimed() -> None:
    shelf, calls = DictShelf(shared=False), []
    shelf.holders[0] = "other"  # ignored: nothing is shared
    assert keeper(shelf, calls).fetch([0])[0][0, 0] == 0 and calls == [[0]]


def test_ensure_looks_up_unknown_keys_once_and_computes_the_missing() -> None:
    shelf, asked = DictShelf(shared=False), []
    shelf.chunks[0] = value(0)
    k: BlockKeeper[int, np.ndarray] = BlockKeeper(shelf)

    def compute_missing(missing: list[int]) -> int:
        asked.append(missing)
        for key in missing:
            k.mark(key)
        return len(missing)

    assert k.ensure([0, 1, 1, 2], compute_missing) == 2 and asked == [[1, 2]]
    assert k.ensure([0, 1, 2], compute_missing) == 0 and asked == [[1, 2]]
