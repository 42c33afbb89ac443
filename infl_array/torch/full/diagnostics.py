"""What a backend found out about its solves: warnings, and a JSON-able record of them.

A backend that finds its values unreliable does two things at once (:meth:`Diagnostics.note`):
it emits a warning, and it records a one-line message under a fixed key, which
``TorchInfluenceBase.diagnostics()`` returns (a store can keep it next to the values it
caches). Keys:

* ``"not_positive_definite"``: the regularised curvature ``C + lambda*Id`` is indefinite, so
  the system solved is not the one influence functions assume (DirectInfluence: its smallest
  eigenvalue; ArnoldiInfluence: kept eigenvalues with ``mu + lambda < 0``; CgInfluence: systems
  that met non-positive curvature). Eigenvalues within rounding of zero
  (:func:`rounding_level`) are not counted: a singular positive semi-definite matrix (e.g. the
  Hessian of a softmax bias) is not indefinite;
* ``"not_converged"``: an iterative solver stopped at ``maxiter`` before its tolerance
  (CgInfluence, LissaInfluence) or ARPACK's eigenpairs are incomplete (ArnoldiInfluence).

Messages are cumulative over the backend's life since its last ``fit`` (counts of systems
add up over calls) and are only ever added, never computed on request: asking costs nothing.
"""

from __future__ import annotations

import threading
import warnings

import torch

__all__ = [
    "NOT_CONVERGED",
    "NOT_POSITIVE_DEFINITE",
    "ConvergenceWarning",
    "Diagnostics",
    "IndefiniteHessianWarning",
    "rounding_level",
]

NOT_POSITIVE_DEFINITE = "not_positive_definite"
NOT_CONVERGED = "not_converged"


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before meeting its tolerance, or met non-positive
    curvature (CG)."""


class IndefiniteHessianWarning(UserWarning):
    """The regularised curvature ``H + lambda*Id`` is not positive definite: influence values
    solve an indefinite system and are unreliable (increase the regularization)."""


def rounding_level(eigenvalues: torch.Tensor, size: int | None = None) -> float:
    """How far below zero rounding alone can push an eigenvalue of a positive semi-definite
    matrix: ``size * eps * max|eigenvalue|`` (``size``: the matrix order, default the number of
    eigenvalues). Only eigenvalues below ``-rounding_level`` mean an indefinite matrix."""
    n = eigenvalues.numel() if size is None else size
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return n * torch.finfo(eigenvalues.dtype).eps * scale


class Diagnostics:
    """Thread-safe record of diagnostic messages, by key, with running counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[str, str] = {}
        self._counts: dict[str, list[float]] = {}

    def __getstate__(self) -> dict[str, object]:
        with self._lock:
            return {"_messages": dict(self._messages), "_counts": dict(self._counts)}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget everything (a new fit)."""
        with self._lock:
            self._messages.clear()
            self._counts.clear()

    def as_dict(self) -> dict[str, str]:
        """A copy of the messages by key (empty when nothing was found)."""
        with self._lock:
            return dict(self._messages)

    def add_counts(
        self, key: str, bad: int, total: int, worst: float = 0.0
    ) -> tuple[int, int, float]:
        """Add ``bad`` of ``total`` systems (and a worst value) to ``key``'s running counts.

        Returns
        -------
        (int, int, float)
            The cumulative ``(bad, total, worst)`` for ``key``.
        """
        with self._lock:
            prev = self._counts.get(key, [0, 0, 0.0])
            now = [prev[0] + bad, prev[1] + total, max(prev[2], worst)]
            self._counts[key] = now
            return int(now[0]), int(now[1]), float(now[2])

    def note(
        self,
        key: str,
        message: str,
        category: type[Warning] | None,
        warning: str | None = None,
        stacklevel: int = 3,
    ) -> None:
        """Record ``message`` under ``key`` and, with a ``category``, warn.

        Parameters
        ----------
        key : str
            :data:`NOT_POSITIVE_DEFINITE` or :data:`NOT_CONVERGED`.
        message : str
            The one-line record (what was found, with numbers).
        category : type of Warning or None
            The warning to emit, or ``None`` for a silent record.
        warning : str or None
            The warning's text (default: ``message``).
        stacklevel : int
            Passed to :func:`warnings.warn`.
        """
        with self._lock:
            self._messages[key] = message
        if category is not None:
            warnings.warn(warning or message, category, stacklevel=stacklevel + 1)
