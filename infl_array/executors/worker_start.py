"""What can go wrong when local worker processes start, said before or as it happens.

``fill(workers=N)`` starts processes with ``spawn``: each imports the caller's main script
again (as ``__mp_main__``) and unpickles the engine (the model, the loss, the data). Two
mistakes otherwise end in "a worker process died" with the cause only on the workers' stderr:

* **No ``if __name__ == "__main__":`` guard** (:func:`check_main_guard`): a script that calls
  ``fill(workers=N)`` at its top level, outside such a guard, would run again in every worker
  (making the store again, starting workers of its own). It is refused in the calling
  process, before any worker starts, naming the script and line.
* **Something the workers cannot load** (:func:`load_engine`): a loss or model defined in a
  notebook or in ``__main__`` is pickled by reference and cannot be found in a worker. The
  worker keeps the error instead of dying, and its first task raises it, explained, with the
  worker's traceback (tasks' exceptions travel back with their traceback).
"""

from __future__ import annotations

import ast
import pickle
import sys
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["WorkerStartError", "check_main_guard", "load_engine", "start_error"]


class WorkerStartError(RuntimeError):
    """A worker process could not load what a fill sends it (the cause is ``__cause__``)."""


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the module-level ``if __name__ == "__main__":`` bodies of ``source``."""
    ranges = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and node.body:
            ranges.append((node.body[0].lineno, node.body[-1].end_lineno or node.lineno))
    return ranges


def _main_module_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            return frame
        frame = frame.f_back
    return None


def check_main_guard(workers: int, frame: FrameType | None = None) -> None:
    """``RuntimeError`` when a script's top level starts workers outside a ``__main__`` guard.

    Parameters
    ----------
    workers : int
        The number of workers asked for (for the message).
    frame : frame or None
        Where to start looking for the script's module-level frame (default: the caller's).
    """
    found = _main_module_frame(frame if frame is not None else sys._getframe(1))
    main_file = found.f_globals.get("__file__") if found is not None else None
    if found is None or not main_file:
        return  # called from a function, a notebook or an interactive session
    try:
        source = Path(main_file).read_text()
        guarded = _guarded_lines(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    line = found.f_lineno
    if any(start <= line <= end for start, end in guarded):
        return
    raise RuntimeError(
        f"fill(workers={workers}) is called at the top level of the script {main_file} (line "
        f'{line}) without an `if __name__ == "__main__":` guard. Worker processes start by '
        "importing the script again, so each would run it again (creating the store and "
        "starting workers of its own). Put the script's work under `if __name__ == "
        '"__main__":` (or in a function called from there), or call fill() without workers.'
    )


def load_engine(payload: bytes) -> tuple[Any, BaseException | None]:
    """The engine unpickled from ``payload``, or None and the error that stopped it."""
    try:
        return pickle.loads(payload), None
    except Exception as exc:
        return None, exc


def start_error(exc: BaseException) -> WorkerStartError:
    """The error a worker's task raises when its engine could not be loaded."""
    return WorkerStartError(
        f"a worker process could not load the array's model, loss and data "
        f"({type(exc).__name__}: {exc}). fill(workers=N) sends them to new processes, which "
        "import them by name: a loss, model or data class defined in a notebook or in the "
        "script's __main__ cannot be found there. Define it in a module the workers can "
        "import (a .py file beside the script, imported by it), or call fill() without "
        "workers. The worker's traceback follows."
    )
