"""How an :class:`~infl_array.arrays.influence.InfluenceArray` describes itself.

:class:`DescribedMixin` holds the array's description group: the facts ``repr`` and the
notebook's view show (blocks computed, stored bytes, compression ratio, backend, mode, store),
``__repr__``, ``_repr_html_`` (:func:`infl_array.display.html.array_html`) and the ``notes`` the
computation left in the store (:mod:`infl_array.storage.notes`). Its methods read the array's
engine and attributes; the split keeps the array class to reading and computing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from infl_array.display.html import ArraySummary, array_html
from infl_array.engine.block_engine import BlockEngine
from infl_array.errors import format_bytes
from infl_array.storage.grid import BlockCoords
from infl_array.storage.meta import StoreMeta
from infl_array.storage.notes import format_notes, read_notes
from infl_array.storage.segments import Segment

__all__ = ["DescribedMixin"]


class _Described(Protocol):
    """What the mixin's methods use of the array."""

    _engine: BlockEngine

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def block_shape(self) -> tuple[int, int]: ...

    @property
    def grid_shape(self) -> tuple[int, int]: ...

    @property
    def meta(self) -> StoreMeta: ...

    @property
    def can_compute(self) -> bool: ...

    @property
    def computed(self) -> np.ndarray: ...

    @property
    def notes(self) -> dict[str, str]: ...

    def stored_bytes(self) -> int: ...

    @property
    def segments(self) -> list[Segment]: ...

    def _described(self) -> dict[str, str]: ...


class DescribedMixin:
    """The description group of the array (see the module docstring)."""

    def _described(self: _Described) -> dict[str, str]:
        """What ``repr`` and the notebook's view show, as text."""
        engine = self._engine
        known = engine.refresh()
        n_blocks = self.grid_shape[0] * self.grid_shape[1]
        stored = self.stored_bytes()
        raw = sum(_block_bytes(engine, c) for c in known)
        ratio = f"{raw / stored:.2f}x" if stored else "n/a"
        if stored and raw < stored:
            block_bytes = self.block_shape[0] * self.block_shape[1] * self.dtype.itemsize
            ratio += (
                f" (blocks of {format_bytes(block_bytes)} are too small to compress: each chunk's "
                "codec header and checksum outweigh the savings; prefer larger blocks)"
            )
        by = self.meta.computed_by
        backend = str(by.get("backend") or by.get("name") or by.get("kind", "?"))
        config = by.get("config")
        if isinstance(config, dict) and config.get("curvature"):
            backend += f" ({config['curvature']})"
        grown = describe_segments(self.segments)
        return {
            **({"segments": grown} if grown else {}),
            "blocks computed": f"{len(known)}/{n_blocks} ({100 * len(known) / n_blocks:.1f}%)",
            "stored": format_bytes(stored),
            "compression ratio": ratio,
            "backend": backend,
            "mode": "computes missing blocks" if self.can_compute else "read-only",
            "store": engine.store.where,
        }

    def __repr__(self: _Described) -> str:
        d = self._described()
        notes = self.notes
        return (
            f"InfluenceArray(shape={self.shape}, dtype={self.dtype}, "
            f"block_shape={self.block_shape}, "
            + (f"appended {d['segments']}, " if "segments" in d else "")
            + f"blocks computed {d['blocks computed']}, "
            f"stored {d['stored']}, compression ratio {d['compression ratio']}, "
            f"backend={d['backend']}, {d['mode']}, store={d['store']})"
        ) + (f"\nnotes on how its values were computed:\n{format_notes(notes)}" if notes else "")

    def _repr_html_(self: _Described) -> str:
        """The notebook's view: :func:`infl_array.display.html.array_html` of these facts."""
        d = self._described()
        facts: tuple[tuple[str, str], ...] = (
            ("shape", str(self.shape)),
            ("dtype", str(self.dtype)),
        )
        facts += (("block shape", f"{self.block_shape}, grid {self.grid_shape}"),)
        facts += tuple(
            (k, d[k])
            for k in ("segments", "stored", "compression ratio", "backend", "mode", "store")
            if k in d
        )
        return array_html(ArraySummary("InfluenceArray", facts, self.computed, self.notes))

    @property
    def notes(self: _Described) -> dict[str, str]:
        """What computing the stored values found, ``{key: message}``.

        E.g. ``"not_positive_definite"`` when a torch backend's ``H + lambda*Id`` was indefinite
        (its values solve an indefinite system). Empty when all was well. Read from the store
        (:mod:`infl_array.storage.notes`), so a store opened without a model shows what its
        computation found.
        """
        return read_notes(self._engine.store.matrix.zarr_store)


def describe_segments(segments: list[Segment]) -> str:
    """The appended segments in a few words (empty: none).

    >>> two = [Segment("train", 1, 10, 16, None, "t"), Segment("train", 2, 16, 20, None, "t")]
    >>> describe_segments(two)
    'train 10:16, 16:20'
    """
    parts = []
    for side in ("test", "train"):
        spans = [f"{s.start}:{s.stop}" for s in segments if s.side == side]
        if spans:
            parts.append(f"{side} {', '.join(spans)}")
    return "; ".join(parts)


def _block_bytes(engine: BlockEngine, coords: BlockCoords) -> int:
    rows, cols = engine.grid.block_bounds(coords)
    return (rows.stop - rows.start) * (cols.stop - cols.start) * engine.dtype.itemsize
