"""Claims: how several fillers of one store share the work instead of repeating it.

Before a filler computes a unit of work (a block, or a block of factors) it *claims* it: it
writes a small claim object ``{"owner", "expires"}`` under ``<array>/claims/<name>`` (keys:
:mod:`infl_array.storage.layout`; factor blocks are claimed beside the matrix's) with a
create-if-absent, then reads it back; the filler whose claim is there owns the unit. On a local
directory the create is exclusive (atomic); on object stores it is an existence check and a
write, so two fillers may both win in a short race and compute the same unit: the values are
identical and every write is atomic, so nothing is wrong, only that work is doubled.

Other fillers skip a unit claimed by a live owner and come back to it later, when it is either
done (in the store) or its claim has expired (or, for an owner on the same machine, its process
is gone). A claim expires ``ttl_s`` seconds after its owner's last refresh; owners refresh the
claims they hold every ``ttl_s / 4`` from a background thread, so a live filler keeps its
claims, and a killed one (even with SIGKILL) loses them by expiry: a claim never blocks a unit
forever. A claim object that does not decode (damaged, or being written on a store without
atomic writes) holds its unit for one ``ttl_s`` from when a filler first sees it so, then is
taken over like an expired one. A live owner holds a unit for at most ``max_wait_s`` (default
:data:`MAX_WAIT_TTLS` lifetimes) as seen by one waiting filler: its heartbeat refreshes the
claim even when its computation is stuck (a request that never ends), so past that the waiter
warns, naming the owner and the unit, and computes the unit as well (the values are identical
and writes atomic: only work is doubled). Expiry compares wall clocks, so machines sharing a
store need clocks within a fraction of ``ttl_s`` of each other (NTP). Claims are released
(deleted) as soon as their unit is done; a claim left by a killed filler is removed by the
filler that takes the unit over.

A failed request never makes a claim outlive its use. A release whose delete fails (an S3 500
or timeout) is not an error of the fill (its unit is done): the claim is no longer refreshed,
so it expires within ``ttl_s``, and :meth:`ClaimBook.close` tries the delete once more. A claim
that a failed request may have stored (the server wrote it, the client gave up) is deleted at
once when possible. Within the process that wrote it, a claim is *abandoned* as soon as no
open claim book of the process holds (or is claiming) it, and is taken over at once: a fill
never waits on a claim its own process left behind.

This module knows zarr's store interface only (through :mod:`infl_array.storage.zarr_compat`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from infl_array.storage.zarr_compat import (
    delete_key,
    list_prefix,
    read_key,
    write_key,
    write_key_if_absent,
)

__all__ = ["CLAIM_TTL_S", "ClaimBook", "is_claim", "live_owners"]

CLAIM_TTL_S = 60.0
"""Seconds a claim lives after its owner's last refresh."""

MAX_WAIT_TTLS = 10
"""Claim lifetimes a filler waits at most on a unit one live owner holds (``max_wait_s``)."""

_OPEN_BOOKS: weakref.WeakValueDictionary[str, ClaimBook] = weakref.WeakValueDictionary()
"""The claim books of this process, by owner (what tells a held claim from an abandoned one)."""


class ClaimBook:
    """The claims one filler holds on units of one store (see the module docstring).

    Parameters
    ----------
    zarr_store : zarr Store
        The store's zarr Store object.
    prefix : str
        Key prefix of the claims (e.g. ``"influence/claims/"``).
    ttl_s : float, optional
        Seconds a claim lives after its last refresh (default :data:`CLAIM_TTL_S`, read at
        construction).
    max_wait_s : float, optional
        Seconds this filler lets one live owner hold a unit it waits for, at most (default
        :data:`MAX_WAIT_TTLS` times ``ttl_s``); then it takes the unit over, with a warning.
    clock : callable
        The wall clock claims expire by (``time.time``; tests pass a clock they move).
    """

    def __init__(
        self,
        zarr_store: Any,
        prefix: str,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
        max_wait_s: float | None = None,
    ) -> None:
        self._store = zarr_store
        self._prefix = prefix
        self.ttl_s = float(CLAIM_TTL_S if ttl_s is None else ttl_s)
        self._clock = clock
        self.max_wait_s = float(MAX_WAIT_TTLS * self.ttl_s if max_wait_s is None else max_wait_s)
        self._unreadable: dict[str, float] = {}  # claim name -> when first seen unreadable
        self._waiting: dict[str, tuple[str, float]] = {}  # name -> (live owner, first seen)
        self.owner = f"{_this_process()}{uuid.uuid4().hex[:12]}"
        self._held: set[str] = set()
        self._claiming: set[str] = set()  # written, not yet read back
        self._unreleased: set[str] = set()  # released, but the delete failed
        _OPEN_BOOKS[self.owner] = self
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": self._clock() + self.ttl_s}).encode()

    def _read(self, name: str) -> dict[str, Any] | None:
        raw = read_key(self._store, self._prefix + name)
        if raw is None:
            return None
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if is_claim(found):
            self._unreadable.pop(name, None)
            return found
        return {}  # being written right now (on a store without atomic writes), or damaged

    def _holds(self, name: str, found: dict[str, Any]) -> bool:
        """Whether the claim ``found`` on ``name`` still holds its unit.

        A readable claim holds it until it is stale. An unreadable one (being written on a
        store without atomic writes, or damaged) holds it for one claim lifetime from when
        this filler first saw it unreadable: a write takes far less, so a claim unreadable for
        that long is damage, and a wait on it ends.
        """
        if found:
            if _is_stale(found, self._clock()) or _abandoned_here(name, found):
                return False
            return not self._waited_out(name, str(found["owner"]))
        first = self._unreadable.setdefault(name, time.monotonic())
        return time.monotonic() - first < self.ttl_s

    def _waited_out(self, name: str, owner: str) -> bool:
        """Whether this filler has seen ``owner`` hold ``name`` for ``max_wait_s`` (then it
        warns and takes the unit over: see the module docstring)."""
        now = time.monotonic()
        seen = self._waiting.get(name)
        if seen is None or seen[0] != owner:
            self._waiting[name] = (owner, now)
            return False
        if now - seen[1] < self.max_wait_s:
            return False
        del self._waiting[name]
        warnings.warn(
            f"infl_array: the claim {self._prefix + name!r} has been held by the live filler "
            f"{owner!r} for over {self.max_wait_s:g} s (it refreshes its claim, but its unit "
            "is not done: it may be stuck); this filler computes the unit as well. The values "
            "are identical and writes atomic: only work is doubled.",
            RuntimeWarning,
            stacklevel=2,
        )
        return True

    def try_claim(self, name: str) -> bool:
        """Claim ``name``; True when this filler now owns it (also when it already did)."""
        if name in self._held:
            return True
        key = self._prefix + name
        self._claiming.add(name)
        try:
            for _ in range(2):
                try:
                    write_key_if_absent(self._store, key, self._content())
                    found = self._read(name)
                except OSError:
                    # the server may have stored it all the same (a timeout after the write):
                    # delete it, or (that failing too) leave it abandoned, see _abandoned_here
                    self._delete_if_mine(name)
                    raise
                if found is not None and found.get("owner") == self.owner:
                    with self._lock:
                        self._held.add(name)
                    self._start_heartbeat()
                    return True
                if found is not None and self._holds(name, found):
                    return False  # a live owner
                delete_key(self._store, key)  # expired (its owner died), or released meanwhile
                self._unreadable.pop(name, None)
            return False
        finally:
            self._claiming.discard(name)

    def release(self, name: str) -> None:
        """Give up ``name``'s claim (its unit is done, or abandoned).

        A failed delete is not raised: the claim is no longer refreshed, so it expires within
        ``ttl_s`` (at once for this process), and :meth:`close` tries the delete again.
        """
        with self._lock:  # not while the heartbeat rewrites it: a released claim stays gone
            if name not in self._held:
                return
            self._held.discard(name)
            if not self._delete_if_mine(name):
                self._unreleased.add(name)

    def _delete_if_mine(self, name: str) -> bool:
        """Delete ``name``'s claim if it is this book's; False when a request failed."""
        try:
            found = self._read(name)
            if found is not None and found.get("owner") == self.owner:
                delete_key(self._store, self._prefix + name)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Release every claim held and stop refreshing (the heartbeat thread has ended on
        return, whatever the releases met)."""
        try:
            for name in list(self._held):
                self.release(name)
            for name in list(self._unreleased):
                if self._delete_if_mine(name):  # one more try; else it expires
                    self._unreleased.discard(name)
        finally:
            self._stop.set()
            if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
                self._heartbeat.join()

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._refresh_loop, name="infl-array-claims", daemon=True
        )
        self._heartbeat.start()

    def refresh(self) -> None:
        """Push the expiry of every claim held to ``ttl_s`` from now (the heartbeat's step)."""
        with self._lock:
            held = list(self._held)
        for name in held:
            with self._lock:
                if name not in self._held:
                    continue  # released meanwhile: writing it would bring it back
                try:
                    write_key(self._store, self._prefix + name, self._content())
                except OSError:
                    continue  # a failed refresh only risks the claim expiring

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self.refresh()


def is_claim(found: Any) -> bool:
    """Whether ``found`` (decoded JSON) is a claim object ``{"owner": str, "expires": number}``.

    >>> is_claim({"owner": "host:1:ab", "expires": 1.5}), is_claim({"owner": "x"})
    (True, False)
    """
    return (
        isinstance(found, dict)
        and isinstance(found.get("owner"), str)
        and isinstance(found.get("expires"), int | float)
        and not isinstance(found.get("expires"), bool)
    )


def live_owners(zarr_store: Any, prefix: str) -> set[str]:
    """The owners of the live claims under ``prefix`` held by other processes (fillers at work
    on the store now); claims of this process, expired ones and unreadable ones are left out."""
    owners = set()
    mine = _this_process()
    now = time.time()
    for key in list_prefix(zarr_store, prefix):
        try:
            found = json.loads(read_key(zarr_store, key) or b"")
        except ValueError:
            continue
        if is_claim(found) and not _is_stale(found, now) and not found["owner"].startswith(mine):
            owners.add(found["owner"])
    return owners


def _this_process() -> str:
    """The prefix of the owners of this process's claims: ``"host:pid:"``."""
    return f"{socket.gethostname()}:{os.getpid()}:"


def _abandoned_here(name: str, claim: dict[str, Any]) -> bool:
    """Whether ``claim`` on ``name`` was written by this process and no open claim book of it
    holds or is claiming ``name`` (a request or a release of it failed): taken over at once.

    (Set membership only, no lock: a book adds ``name`` to ``_claiming`` before writing it.)
    """
    owner = str(claim.get("owner", ""))
    if not owner.startswith(_this_process()):
        return False
    book = _OPEN_BOOKS.get(owner)
    return book is None or (name not in book._held and name not in book._claiming)


def _is_stale(claim: dict[str, Any], now: float) -> bool:
    """Whether a claim's owner is gone at time ``now``: its claim expired, or it was a process
    of this machine that no longer runs (a killed filler here is noticed at once, without
    waiting for expiry)."""
    if float(claim.get("expires", now + 1)) < now:
        return True
    host, _, rest = str(claim.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False
