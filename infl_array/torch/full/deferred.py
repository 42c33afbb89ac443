"""A deferred build: expensive state computed once, on first need, from any thread.

:class:`DeferredBuild` is the mixin behind the lazy ``fit`` of the torch backends: ``fit``
records what is cheap and calls :meth:`DeferredBuild.reset_build`; every method that needs the
expensive state calls :meth:`DeferredBuild.prepare` first, which runs the subclass hook
``_build`` once (double-checked under a re-entrant lock, so concurrent readers wait for one
build instead of each doing it) after the hook ``_check_buildable``. The lock is not pickled:
an object is pickled as it stands (built or not) and gets a fresh lock when unpickled.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

import torch

from infl_array.engine.progress import activity

__all__ = ["DeferredBuild", "held_tensor_bytes"]

_D = TypeVar("_D", bound="DeferredBuild")


def held_tensor_bytes(obj: object, skip: tuple[str, ...] = ("_flat", "model", "_fit_data")) -> int:
    """Bytes of the tensors ``obj``'s attributes hold (directly, in lists, tuples and dicts, or
    one object deep: a preconditioner's), each storage once; ``skip`` names attributes left out
    (the model and the data are the caller's)."""
    seen: set[int] = set()

    def walk(value: object, depth: int) -> int:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = storage.data_ptr()
            if key in seen or value.device.type == "meta":
                return 0
            seen.add(key)
            return int(storage.nbytes())
        if isinstance(value, list | tuple):
            return sum(walk(v, depth) for v in value)
        if isinstance(value, dict):
            return sum(walk(v, depth) for v in value.values())
        if depth > 0 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            return sum(walk(v, depth - 1) for v in vars(value).values())
        return 0

    return sum(walk(v, 1) for k, v in vars(obj).items() if k not in skip)


class DeferredBuild:
    """Mixin: :meth:`prepare` runs ``_build`` once, thread-safely (see the module docstring)."""

    _built: bool = False
    _build_lock: threading.RLock

    def reset_build(self) -> None:
        """Forget the built state's validity (a new fit); ``_build`` runs again when needed."""
        if not hasattr(self, "_build_lock"):
            self._build_lock = threading.RLock()
        self._built = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_build_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_lock = threading.RLock()

    def prepare(self: _D) -> _D:
        """Run the expensive part of the fit now, unless it has run (once; thread-safe).

        Every method that needs it calls this first; call it yourself to pay the cost up
        front (e.g. before timing reads, or before sending the object to worker processes so
        that they do not each prepare it).

        Returns
        -------
        self
        """
        self._check_buildable()
        if not self._built:
            with self._build_lock:
                if not self._built:
                    with activity(f"fitting {type(self).__name__}"):
                        self._build()
                    self._built = True
        return self

    @property
    def is_prepared(self) -> bool:
        """Whether the expensive part has run since the last fit (:meth:`prepare`)."""
        return self._built

    def _check_buildable(self) -> None:
        """Hook: raise when the build cannot run (e.g. before ``fit``)."""

    def _build(self) -> None:
        """Hook: the expensive part, run once by :meth:`prepare`."""
