"""Progress bars on stderr (tqdm), and a silent stand-in when progress is off.

A :func:`counter_bar` with a ``delay`` ticks: a timer redraws it every
:data:`TICK_S` seconds once the delay has passed, so a read whose cost sits in one block (or in
a lazy fit run by its first block) shows its bar, the time spent and what it is doing
(:func:`activity`) from the first second, not only when a block completes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["TICK_S", "activity", "counter_bar", "current_activity", "progress_bar"]

TICK_S = 0.5
"""Seconds between redraws of a ticking bar."""

_activities: list[str] = []
_activities_lock = threading.Lock()


@contextlib.contextmanager
def activity(name: str) -> Iterator[None]:
    """Name what the process is doing (e.g. ``"fitting LissaInfluence"``) while inside.

    A ticking bar shows the innermost name beside its count; nested names stack.
    """
    with _activities_lock:
        _activities.append(name)
    try:
        yield
    finally:
        with _activities_lock:
            _activities.remove(name)


def current_activity() -> str:
    """The innermost :func:`activity` name, or ``""``."""
    with _activities_lock:
        return _activities[-1] if _activities else ""


T = TypeVar("T")


def progress_bar(
    items: Iterable[T], enabled: bool, desc: str, total: int | None = None
) -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, total=total, unit="block", file=sys.stderr))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TickingBar:
    """A tqdm bar redrawn by a timer thread once ``delay`` has passed (see the module)."""

    def __init__(self, bar: Any, delay: float) -> None:
        self.bar, self.delay, self.start = bar, delay, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="infl-array-progress", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            if time.monotonic() - self.start < self.delay:
                continue
            self.bar.set_postfix_str(current_activity(), refresh=False)
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()


def counter_bar(total: int, enabled: bool, desc: str = "fill", delay: float = 0.0) -> Any:
    """A bar counting ``total`` blocks (``update(n)``, ``close()``); silent when not enabled.

    With ``delay`` (seconds) the bar appears only once that much time has passed, so quick
    work shows nothing; from then on it is redrawn every :data:`TICK_S` seconds, with the
    current :func:`activity`, whether or not a block completes.
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="block", file=sys.stderr, delay=delay)
    return _TickingBar(bar, delay) if delay > 0 else bar
