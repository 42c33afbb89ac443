"""Notes: what the computation of a store's values found that a reader should know.

A source may find its values unreliable while computing them: a torch backend whose
regularised curvature ``H + lambda*Id`` is not positive definite, or an iterative solver that
stopped before its tolerance (:mod:`infl_array.torch.full.diagnostics`). The source reports such
findings as JSON-able ``{key: message}`` (``BlockSource.notes()``,
:mod:`infl_array.engine.sources`); the engine records each new or changed one in the store after
computing blocks, and ``repr(arr)`` and ``infl-array info`` show them. Keys are short names
(``"not_positive_definite"``, ``"not_converged"``); messages say what was found, with numbers,
and the fix.

Layout: one small JSON object per key, ``<store>/influence/notes/<key>.json`` holding
``{"key": ..., "message": ...}``, next to the matrix's chunks and claims, so plain zarr readers
ignore it (keys named by :func:`infl_array.storage.layout.note_key`). Each note is its own
object, written whole (atomically on local directories), so concurrent fillers never corrupt
each other's notes; a later write of the same key replaces the message (e.g. with updated
counts). A note is never removed: values computed while it held stay in the store
(``overwrite=True`` starts a new store without notes).

This module knows zarr's store interface only (through :mod:`infl_array.storage.zarr_compat`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from infl_array.storage import layout
from infl_array.storage.zarr_compat import list_prefix, read_key, write_key

__all__ = ["format_notes", "read_notes", "write_notes"]

_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def write_notes(zarr_store: Any, notes: Mapping[str, str]) -> None:
    """Record ``notes`` (``{key: message}``) in the store, one object per key.

    Raises
    ------
    ValueError
        For a key that is not a short name of letters, digits, ``_``, ``.`` or ``-``.
    """
    for key, message in notes.items():
        if not _KEY.match(key):
            raise ValueError(
                f"a note's key must be a short name of letters, digits, '_', '.' or '-' (e.g. "
                f"'not_positive_definite'); got {key!r}."
            )
        data = json.dumps({"key": key, "message": str(message)}).encode()
        write_key(zarr_store, layout.note_key(key), data)


def read_notes(zarr_store: Any) -> dict[str, str]:
    """The notes recorded in the store, ``{key: message}`` sorted by key (empty: none).

    A note that does not decode (being written right now, or damaged) is shown as such rather
    than hidden.
    """
    found: dict[str, str] = {}
    for name in sorted(list_prefix(zarr_store, layout.NOTES_PREFIX)):
        raw = read_key(zarr_store, name)
        key = layout.note_name(name)
        try:
            record = json.loads(raw or b"")
            found[key] = str(record["message"])
        except (ValueError, KeyError, TypeError):
            found[key] = f"(unreadable note object {name!r})"
    return found


def format_notes(notes: Mapping[str, str]) -> str:
    """One line per note, ``"  key: message"``, for ``repr`` and ``info`` (empty: none).

    Examples
    --------
    >>> print(format_notes({"not_converged": "CG stopped at maxiter=2."}))
      not_converged: CG stopped at maxiter=2.
    """
    return "\n".join(f"  {key}: {message}" for key, message in notes.items())
