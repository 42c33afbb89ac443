"""Progress bars on stderr (tqdm), and a silent stand-in when progress is off."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["counter_bar", "progress_bar"]

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


def counter_bar(total: int, enabled: bool, desc: str = "fill", delay: float = 0.0) -> Any:
    """A bar counting ``total`` blocks (``update(n)``, ``close()``); silent when not enabled.

    With ``delay`` (seconds) the bar appears only once that much time has passed, so quick
    work shows nothing.
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="block", file=sys.stderr, delay=delay)
