"""The memory budget: bytes the parts of one backend and its arrays hold together.

``memory_budget`` (a backend's argument, or an array's when its model has none) bounds what a
fit and a fill hold, beyond the model and the data the caller holds. One :class:`Budget`
object is shared by every part that holds memory, and each part draws from it:

* **Lasting holdings** (:meth:`Budget.reserve` with ``lasting=True``): fitted state that lives
  as long as the backend (Kronecker factors and eigenbases, projection matrices, kept fit rows).
* **Transient holdings** (:meth:`Budget.hold`, :meth:`Budget.count`): working space of one
  call (per-batch gradients, factors being computed, a block being computed, blocks waiting
  for their write), released when the call ends.
* **Elastic holdings** (:meth:`Budget.try_reserve`, registered with
  :meth:`Budget.add_elastic`): caches (the factor memo, decoded blocks, strips). They keep
  what the budget has left, and give bytes back (least recently used first) when a transient or
  lasting holding needs them.

The account keeps :attr:`Budget.headroom`, a sixteenth of the total (:data:`HEADROOM_SHARE`),
free for what no account sees: the interpreter's and the libraries' own objects, buffers the
allocator keeps. A holding the parts can do without (a cache's value, a kept copy:
:meth:`Budget.try_reserve`) and working space sized to what is left (:meth:`Budget.count`)
leave it free, and the caches give back what any other holding would take of it
(:meth:`Budget.reserve`; it is taken only when they have nothing left). On the
1e6-parameter ladder CNN (``EkfacInfluence``, 1 GiB, ``create`` and ``fill``) that was 35 to
50 MiB; with the account full to the byte the peak went past ``memory_budget`` by 4 MiB
without the headroom, by 0.7 MiB with a 32nd left by the caches only (chunks sized to the
whole budget took it), and by 7 MiB with a 16th left by caches and chunks (the writes' and
outputs' holdings took it, the caches full).

A holding that cannot fit, even after the caches gave back what they hold, raises
:class:`~infl_array.errors.MemoryBudgetError` naming what asked, how much, what holds the rest,
and the fix. Sizes are chosen from what is left: :meth:`Budget.count` (how many samples of a
chunk fit), :func:`default_block_shape` (the block shape of a new store).

:attr:`Budget.high_water` is the most the holdings ever took together (tests instrument it);
the holdings are an account of what the parts hold, not a measurement of the process.

Making a budget holds glibc's mmap threshold (:mod:`~infl_array.engine.allocator`): without
it, freed tensors stay resident in malloc's heaps, outside any account.

Nothing here waits: a holding that does not fit is refused, never waited for. The budget's lock
guards only its own bookkeeping (no call out is made while it is held), and giving bytes back
never waits for it: :meth:`Budget.release` is called by finalisers (a cache that went away),
which the garbage collector runs at any allocation in any thread, also inside the budget's own
critical section, where waiting for the lock would wait for the thread itself, forever. A
release made while the lock is busy is queued and applied, in order, by the next operation on
the budget (every reading of it first applies what is queued).

This module imports neither numpy nor torch.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from infl_array.engine.allocator import hold_mmap_threshold
from infl_array.errors import MemoryBudgetError, format_bytes

__all__ = [
    "DEFAULT_FIX",
    "HEADROOM_SHARE",
    "Budget",
    "Elastic",
    "check_budget_value",
    "default_block_shape",
]

DEFAULT_FIX = "raise memory_budget, or pass fewer samples per call (a smaller block_shape)."
"""The fix a refusal names when its caller names none."""

HEADROOM_SHARE = 16
"""The account keeps ``total // HEADROOM_SHARE`` free (see the module docstring)."""


class Elastic(Protocol):
    """A cache drawing from a budget that gives bytes back on request."""

    @property
    def held_bytes(self) -> int:
        """Bytes it holds now (drawn from the budget)."""
        ...

    def reclaim(self, nbytes: int) -> int:
        """Give back at least ``nbytes`` if it can (least recently used first); returns the
        bytes given back."""
        ...


def check_budget_value(value: object, name: str = "memory_budget") -> int:
    """``value`` as a positive int of bytes, else ``TypeError``/``ValueError`` naming ``name``.

    >>> check_budget_value(1 << 30)
    1073741824
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int (bytes); got {value!r}. Pass e.g. 2 << 30 (2 GiB).")
    n = int(value.__index__())
    if n <= 0:
        raise ValueError(f"{name} must be > 0 bytes; got {n}. Pass e.g. 2 << 30 (2 GiB).")
    return n


class Budget:
    """Bytes the parts of one backend and its arrays may hold together (see the module
    docstring).

    Thread-safe. Pickled with its total and its lasting holdings only: a copy sent to a worker
    starts with no transient or elastic holdings (its caches start empty).

    Parameters
    ----------
    total : int
        The budget in bytes.
    name : str
        The argument that set it, as messages name it.

    Attributes
    ----------
    high_water : int
        The most bytes the holdings took together so far.
    headroom : int
        Bytes the account keeps free for what it does not see (see the module docstring).

    Examples
    --------
    >>> b = Budget(1000)
    >>> with b.hold(600, "a block"):
    ...     b.available
    400
    >>> b.reserve(300, "curvature", lasting=True)
    >>> b.available, b.high_water, b.holders()
    (700, 600, {'curvature': 300})
    >>> b.try_reserve(700, "a cache"), b.try_reserve(700 - b.headroom, "a cache")
    (False, True)
    """

    def __init__(self, total: int, name: str = "memory_budget") -> None:
        self.total = check_budget_value(total, name)
        self.name = name
        self.headroom = self.total // HEADROOM_SHARE
        hold_mmap_threshold()  # what the parts free leaves the process (allocator module)
        self.high_water = 0
        self._held: dict[str, int] = {}
        self._sum = 0  # of self._held's values
        self._lasting: set[str] = set()
        self._elastic: list[weakref.ref[Elastic]] = []
        self._lock = threading.Lock()
        self._returns: deque[tuple[int, str]] = deque()  # releases made while the lock was busy

    # ------------------------------------------------------------------ state
    @property
    def reserved(self) -> int:
        """Bytes held now, all holdings together."""
        with self._locked():
            return self._sum

    @property
    def available(self) -> int:
        """Bytes not held now (caches may give back more: :meth:`reclaimable`)."""
        with self._locked():
            return max(0, self.total - self._sum)

    def lasting_bytes(self) -> int:
        """Bytes of the lasting holdings (fitted state)."""
        with self._locked():
            return sum(v for k, v in self._held.items() if k in self._lasting)

    def holders(self) -> dict[str, int]:
        """What holds bytes now: ``{what: bytes}`` (holdings of zero bytes left out)."""
        with self._locked():
            return {k: v for k, v in self._held.items() if v > 0}

    def __repr__(self) -> str:
        return (
            f"Budget({self.name}={format_bytes(self.total)}, held {format_bytes(self.reserved)}, "
            f"high water {format_bytes(self.high_water)})"
        )

    # ------------------------------------------------------------------ holdings
    def try_reserve(
        self, nbytes: int, what: str, *, lasting: bool = False, headroom: bool = True
    ) -> bool:
        """Hold ``nbytes`` for ``what`` if they are available now (nothing is reclaimed),
        leaving :attr:`headroom` free unless ``headroom=False`` (a holding the caller then
        makes room for, or takes with :meth:`reserve`)."""
        nbytes = max(0, int(nbytes))
        limit = self.total - (self.headroom if headroom else 0)
        with self._locked():
            if self._sum + nbytes > limit:
                return False
            self._take(nbytes, what, lasting)
            return True

    def reserve(
        self, nbytes: int, what: str, fix: str = DEFAULT_FIX, *, lasting: bool = False
    ) -> None:
        """Hold ``nbytes`` for ``what``, asking the caches to give bytes back when needed.

        The caches give back what would take :attr:`headroom` (a holding takes it only when
        they have nothing left to give). Raises :class:`~infl_array.errors.MemoryBudgetError`
        (naming ``what``, the bytes, what holds the rest and ``fix``) when they do not fit.
        ``lasting`` holdings are kept when the budget is pickled (fitted state that travels with
        a backend).
        """
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise self._refusal(nbytes, what, fix)
        for _ in range(64):  # caches give back what they hold; a bound against a livelock
            with self._locked():
                short = self._sum + nbytes - self.total
                if short <= 0 and self._sum + nbytes <= self.total - self.headroom:
                    self._take(nbytes, what, lasting)
                    return
            if self._reclaim(short + self.headroom) <= 0:
                break
        with self._locked():  # the caches gave what they could: the headroom may be taken
            if self._sum + nbytes <= self.total:
                self._take(nbytes, what, lasting)
                return
        raise self._refusal(nbytes, what, fix)

    def release(self, nbytes: int, what: str) -> None:
        """Give back ``nbytes`` held for ``what``. Never waits (see the module docstring): where
        the lock is busy, the release is applied by the next operation on the budget."""
        self._returns.append((max(0, int(nbytes)), what))  # atomic: safe in a finaliser
        if self._lock.acquire(blocking=False):
            try:
                self._apply_returns()
            finally:
                self._lock.release()

    def release_all(self, what: str) -> None:
        """Give back everything held for ``what`` (a refit replaces its lasting state)."""
        with self._locked():
            self._sum -= self._held.pop(what, 0)
            self._lasting.discard(what)

    @contextmanager
    def hold(self, nbytes: int, what: str, fix: str = DEFAULT_FIX) -> Iterator[None]:
        """Hold ``nbytes`` for ``what`` while the ``with`` block runs (:meth:`reserve`)."""
        self.reserve(nbytes, what, fix)
        try:
            yield
        finally:
            self.release(nbytes, what)

    def count(self, per_item: int, n: int, what: str, fix: str = DEFAULT_FIX) -> int:
        """How many of ``n`` items of ``per_item`` bytes fit now (at least one, at most ``n``).

        Counts what the caches would give back, less :attr:`headroom` (one item may take it);
        raises :class:`~infl_array.errors.MemoryBudgetError` when not even one item fits.
        """
        per_item = max(1, int(per_item))
        room = self.available + self.reclaimable()
        if per_item > room:
            raise self._refusal(per_item, f"{what} for one sample", fix)
        return max(1, min(int(n), (room - self.headroom) // per_item))

    # ------------------------------------------------------------------ caches
    def add_elastic(self, holder: Elastic) -> None:
        """Register a cache that gives bytes back when a holding needs them (held weakly:
        a cache that goes away unregisters itself)."""
        with self._locked():
            self._elastic.append(weakref.ref(holder))

    def _live_elastic(self) -> list[Elastic]:
        with self._locked():
            live = [h for h in (r() for r in self._elastic) if h is not None]
            self._elastic = [weakref.ref(h) for h in live]
        return live

    def reclaimable(self) -> int:
        """Bytes the caches hold now and would give back."""
        return sum(h.held_bytes for h in self._live_elastic())

    def _reclaim(self, nbytes: int) -> int:
        """Ask the caches for ``nbytes`` back (the largest first); returns the bytes given
        back. Called without the budget's lock held (caches release into it)."""
        given = 0
        for holder in sorted(self._live_elastic(), key=lambda h: -h.held_bytes):
            if given >= nbytes:
                break
            given += holder.reclaim(nbytes - given)
        return given

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock held, the releases queued while it was busy applied first. No call out of
        this module is made while it is held (a finaliser that runs inside only queues)."""
        with self._lock:
            self._apply_returns()
            yield

    def _apply_returns(self) -> None:
        """Apply the queued releases (the lock is held)."""
        while self._returns:
            nbytes, what = self._returns.popleft()
            left = self._held.get(what, 0)
            given = min(left, nbytes)
            self._sum -= given
            if left - given > 0:
                self._held[what] = left - given
            else:
                self._held.pop(what, None)
                self._lasting.discard(what)

    def _take(self, nbytes: int, what: str, lasting: bool) -> None:
        """Record a holding (the lock is held)."""
        if nbytes:
            self._held[what] = self._held.get(what, 0) + nbytes
            self._sum += nbytes
            self.high_water = max(self.high_water, self._sum)
        if lasting:
            self._lasting.add(what)

    def _refusal(self, nbytes: int, what: str, fix: str) -> MemoryBudgetError:
        holders = self.holders()
        held = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(holders.items()))
        return MemoryBudgetError(
            f"{what} needs {format_bytes(nbytes)}, more than the {self.name} of "
            f"{format_bytes(self.total)} has left ({format_bytes(self.available)} free; held: "
            f"{held or 'nothing'}); {fix}",
            what=what,
            nbytes=nbytes,
            budget=self.total,
            held=holders,
        )

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        with self._locked():
            lasting = {k: v for k, v in self._held.items() if k in self._lasting}
        return {"total": self.total, "name": self.name, "lasting": lasting}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["total"], state["name"])  # type: ignore[misc]
        for what, nbytes in state["lasting"].items():
            self._take(nbytes, what, lasting=True)


def default_block_shape(
    shape: tuple[int, int],
    row_bytes: tuple[int, int],
    budget: Budget,
    largest: tuple[int, int] = (256, 4096),
) -> tuple[int, int]:
    """The block shape of a new model-backed store, chosen from what is left of ``budget``.

    ``row_bytes`` are the bytes of one test point's and one train point's factors. A block's
    test factors may take a sixteenth of what the budget has left and its train factors a
    thirty-second (the rest is for the tiles' other block rows, which share the train factors
    of each block column, the solves' working space, the products, the decoded blocks and the
    writes in flight); no more than ``largest`` and no more than the matrix. Raises
    :class:`~infl_array.errors.MemoryBudgetError` when the factors of one
    test point and one train point do not fit together.

    Examples
    --------
    >>> default_block_shape((1000, 100000), (400, 400), Budget(1 << 30))
    (256, 4096)
    >>> default_block_shape((1000, 100000), (4 << 20, 1 << 20), Budget(1 << 30))
    (16, 32)
    """
    room = budget.available + budget.reclaimable()
    test_row, train_row = (max(1, int(b)) for b in row_bytes)
    if test_row + train_row > room:
        raise MemoryBudgetError(
            f"the factors of one test point and one train point need "
            f"{format_bytes(test_row + train_row)}, more than the {budget.name} of "
            f"{format_bytes(budget.total)} has left ({format_bytes(room)}); raise "
            f"{budget.name}, or use a backend with smaller factors (ProjectedInfluence).",
            what="the factors of one test point and one train point",
            nbytes=test_row + train_row,
            budget=budget.total,
            held=budget.holders(),
        )
    rows = max(1, min(largest[0], shape[0], room // 16 // test_row))
    cols = max(1, min(largest[1], shape[1], room // 32 // train_row))
    return rows, cols
