"""Tests of infl_array.engine.budget: one account of what the parts of a backend hold (issue 21)."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
from helpers import bounded

from infl_array.engine.budget import HEADROOM_SHARE, Budget, default_block_shape
from infl_array.engine.cache import BlockCache, BoundedLru
from infl_array.errors import MemoryBudgetError


def test_holdings_add_up_and_the_high_water_mark_follows() -> None:
    b = Budget(1000)
    b.reserve(300, "curvature", lasting=True)
    with b.hold(500, "a batch"):
        assert (b.reserved, b.available) == (800, 200)
        assert b.holders() == {"curvature": 300, "a batch": 500}
    assert (b.reserved, b.high_water, b.lasting_bytes()) == (300, 800, 300)
    assert b.try_reserve(700, "a block", headroom=False)
    assert not b.try_reserve(1, "a block", headroom=False)
    b.release(700, "a block")
    # what a part can do without leaves the headroom free (for what no account sees)
    assert b.headroom == 1000 // HEADROOM_SHARE and not b.try_reserve(700, "a cache")
    assert b.try_reserve(700 - b.headroom, "a cache") and not b.try_reserve(1, "a cache")
    b.release(700 - b.headroom, "a cache")
    b.release_all("curvature")
    assert b.reserved == 0 and b.holders() == {}


def test_a_refusal_names_what_asked_how_much_what_holds_the_rest_and_the_fix() -> None:
    b = Budget(1 << 20)
    b.reserve(600 << 10, "the curvature", lasting=True)
    with pytest.raises(MemoryBudgetError) as info:
        b.reserve(512 << 10, "test factors of 8 samples", "use a smaller block_shape.")
    err = info.value
    assert isinstance(err, MemoryError)
    assert (err.what, err.nbytes, err.budget) == ("test factors of 8 samples", 512 << 10, 1 << 20)
    assert err.held == {"the curvature": 600 << 10}
    assert str(err) == (
        "test factors of 8 samples needs 512.0 KiB, more than the memory_budget of 1.0 MiB has "
        "left (424.0 KiB free; held: the curvature 600.0 KiB); use a smaller block_shape."
    )
    assert b.reserved == 600 << 10  # nothing was taken


@pytest.mark.parametrize(("total", "error"), [(0, ValueError), (-5, ValueError), (1.5, TypeError)])
def test_bad_totals_are_refused(total: object, error: type) -> None:
    with pytest.raises(error, match="memory_budget must be"):
        Budget(total)  # type: ignore[arg-type]


def test_count_fits_what_is_left_and_refuses_a_sample_that_cannot_fit() -> None:
    b = Budget(1000)
    b.reserve(400, "held", lasting=True)
    assert b.count(100, 50, "rows") == 5  # 600 left, less 62 of headroom
    assert b.count(100, 3, "rows") == 3
    assert b.count(590, 3, "rows") == 1  # one may take the headroom
    with pytest.raises(MemoryBudgetError, match="rows for one sample needs 700 B"):
        b.count(700, 5, "rows")


def test_caches_draw_from_the_budget_and_give_bytes_back() -> None:
    b = Budget(1067)  # 1001 for the caches, 66 of headroom
    assert b.headroom == 66
    cache = BoundedLru[int, bytes](10_000, len, b, "a cache")
    for k in range(5):
        cache.put(k, bytes(200))
    assert len(cache) == 5 and b.holders() == {"a cache": 1000}
    cache.put(5, bytes(300))  # evicts the two oldest to make room
    assert sorted(cache._items) == [2, 3, 4, 5] and b.reserved == 900
    assert b.reclaimable() == 900 and b.count(500, 10, "x") == 2  # the cache counts as room
    with b.hold(600, "a batch"):  # the cache gives back, least recently used first
        assert sorted(cache._items) == [5] and b.holders() == {"a cache": 300, "a batch": 600}
    with pytest.raises(MemoryBudgetError, match="everything needs"):
        b.reserve(1068, "everything")
    assert b.reserved == 300  # nothing was given back for a holding that could never fit
    del cache
    gc.collect()
    assert b.reserved == 0  # a cache that goes away gives its bytes back
    assert b.reclaimable() == 0


class _CollectingLabel(str):
    """A holding's name whose hashing runs the garbage collector, as any allocation inside the
    budget's own critical section may."""

    def __hash__(self) -> int:
        gc.collect()
        return super().__hash__()


def test_a_cache_collected_inside_the_budgets_own_lock_gives_its_bytes_back_without_waiting() -> (
    None
):
    # the fault matrix's hang: a cache that went away (in a reference cycle) was finalised by a
    # collection that ran inside ``reserve``; its finaliser's ``release`` waited for the lock
    # its own thread held, and every later fill of the backend waited for that thread
    b = Budget(1000)
    cache = BoundedLru[int, bytes](1000, len, b, "a cache")
    cache.put(0, bytes(100))
    cycle: list[object] = [cache]
    cycle.append(cycle)  # only the garbage collector frees it
    del cache, cycle
    bounded(lambda: b.reserve(10, _CollectingLabel("a batch")), 10.0)
    assert b.holders() == {"a batch": 10} and b.reserved == 10
    bounded(lambda: b.reserve(990, "the rest"), 10.0)  # the cache's bytes are free again
    assert b.available == 0


def test_a_cache_keeps_nothing_the_budget_has_no_room_for() -> None:
    b = Budget(1000)
    b.reserve(900, "curvature", lasting=True)
    cache = BlockCache(max_bytes=1 << 20, budget=b)
    cache.put((0, 0), np.zeros(10))  # 80 B: kept
    cache.put((0, 1), np.zeros(20))  # 160 B: the older block goes, still no room: not kept
    assert len(cache) == 0 and b.reserved == 900
    cache.put((0, 0), np.zeros(10))
    cache.clear()
    assert b.reserved == 900 and cache.max_bytes == cache.memory_budget == 1 << 20


def test_a_pickled_budget_keeps_its_total_and_lasting_holdings_only() -> None:
    b = Budget(1000)
    b.reserve(300, "curvature", lasting=True)
    b.reserve(200, "a batch")
    copy = pickle.loads(pickle.dumps(b))
    assert (copy.total, copy.holders(), copy.lasting_bytes()) == (1000, {"curvature": 300}, 300)


def test_default_block_shape_follows_the_budget() -> None:
    small_factors = (400, 400)
    assert default_block_shape((1000, 10**5), small_factors, Budget(1 << 30)) == (256, 4096)
    assert default_block_shape((10, 20), small_factors, Budget(1 << 30)) == (10, 20)
    wide = (40 << 20, 6 << 20)  # a 1e7-parameter model's factors
    assert default_block_shape((1000, 10**5), wide, Budget(8 << 30)) == (12, 42)
    assert default_block_shape((1000, 10**5), wide, Budget(1 << 30)) == (1, 5)
    held = Budget(1 << 30)
    held.reserve(1000 << 20, "curvature", lasting=True)
    with pytest.raises(MemoryBudgetError, match="one test point and one train point need 46"):
        default_block_shape((1000, 10**5), wide, held)


def test_a_holding_has_the_caches_give_back_the_headroom_before_it_takes_it() -> None:
    b = Budget(1600)  # 100 of headroom
    cache = BoundedLru[int, bytes](10_000, len, b, "a cache")
    for k in range(5):
        cache.put(k, bytes(300))  # 1500: all but the headroom
    with b.hold(200, "a block"):  # fits the total, but would take the headroom
        assert b.holders() == {"a cache": 1200, "a block": 200} and b.available == 200
    cache.clear()
    with b.hold(1550, "all but 50"):  # nothing left to give back: the headroom is taken
        assert b.available == 50
