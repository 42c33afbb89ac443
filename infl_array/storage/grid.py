"""One stored zarr array as a grid of blocks: block reads and writes, listing, housekeeping.

A 2-D array (the influence matrix) has one block per chunk. A 1-D array of length ``n`` beside
it (the self-influence) is seen as shape ``(1, n)`` with blocks ``(1, chunk)``, block ``(0, j)``
being chunk ``j``, so one engine serves both. Which blocks are computed is read from the store
itself: a block is computed exactly when its chunk key exists. Every block is written with one
chunk-aligned assignment, which zarr performs as one atomic replace (temporary file + rename on
a local directory), so a key that exists always holds a complete block. A writer killed between
creating its temporary file and renaming it leaves a ``<j>.<uuid4hex>.partial`` file next to
the block; such files are never counted as blocks, and :meth:`BlockGrid.clean_partials`
removes them once they are provably abandoned. Every key and path is named by
:mod:`infl_array.storage.layout` (:attr:`BlockGrid.layout`).

This module knows zarr and numpy, not torch.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from infl_array.errors import CorruptBlockError
from infl_array.storage import layout
from infl_array.storage.remote_errors import storage_error
from infl_array.storage.segments import check_not_grown
from infl_array.storage.zarr_compat import (
    delete_key,
    empty_chunks_kept,
    keep_empty_chunks,
    key_exists,
    list_prefix,
    size_under,
)

__all__ = [
    "PARTIAL_MIN_AGE_S",
    "WRITE_RUN_BYTES",
    "BlockCoords",
    "BlockGrid",
    "block_range",
    "create_error",
    "extends_run",
    "run_region",
    "write_error",
]

BlockCoords = tuple[int, int]
"""A block's ``(i, j)``: its block row and block column (the package's one definition)."""


def block_range(first: int, length: int, n: int, last: int | None = None) -> range:
    """The indices of block ``first`` (through block ``last``, when given) along an axis.

    The package's one block-bounds rule: an axis of ``n`` indices is cut in blocks of
    ``length``, the last one shorter.

    Examples
    --------
    >>> block_range(2, 4, 10)
    range(8, 10)
    >>> block_range(0, 4, 10, last=1)
    range(0, 8)
    """
    stop = first if last is None else last
    return range(first * length, min((stop + 1) * length, n))


def extends_run(run: list[BlockCoords], coords: BlockCoords) -> bool:
    """Whether block ``coords`` continues ``run``: the next block down its block column or
    along its block row (a run of one block grows either way).

    Examples
    --------
    >>> extends_run([(0, 3)], (1, 3)), extends_run([(0, 3), (1, 3)], (1, 4))
    (True, False)
    >>> extends_run([(2, 0), (2, 1)], (2, 2)), extends_run([], (0, 0))
    (True, False)
    """
    if not run:
        return False
    (i, j), (i0, j0) = run[-1], run[0]
    down = coords == (i + 1, j) and j0 == j
    along = coords == (i, j + 1) and i0 == i
    return down or along


def run_region(
    run: list[BlockCoords], block_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[slice, slice, int]:
    """The rows and columns a run of blocks (:func:`extends_run`) covers, and the axis its
    blocks are stacked along (0: down a block column, 1: along a block row).

    >>> run_region([(0, 1), (1, 1), (2, 1)], (2, 3), (5, 9))
    (slice(0, 5, None), slice(3, 6, None), 0)
    """
    (i0, j0), (i1, j1) = run[0], run[-1]
    axis = 0 if j0 == j1 and len(run) > 1 and i1 > i0 else 1
    rows = block_range(i0, block_shape[0], shape[0], i1)
    cols = block_range(j0, block_shape[1], shape[1], j1)
    return slice(rows.start, rows.stop), slice(cols.start, cols.stop), axis


WRITE_RUN_BYTES = 8 << 20
"""A run of blocks written with one zarr call holds about this many bytes at most (8 MiB; one
block, when a block is larger)."""

PARTIAL_MIN_AGE_S = 3600.0
"""Temporary block files younger than this (by mtime) may belong to a live writer."""


class BlockGrid:
    """The blocks of one zarr array (see the module docstring).

    Parameters
    ----------
    array : zarr.Array
        The stored array (1-D or 2-D).
    where : str
        How messages name the store.
    local_root : Path or None
        The store's directory when it is local (fast listing, housekeeping), else None.
    """

    def __init__(self, array: zarr.Array, where: str, local_root: Path | None) -> None:
        self.array = keep_empty_chunks(array)
        self.name = array.path  # e.g. "influence" or "factors/train"
        self.layout = layout.array_layout(self.name)
        self.where = where
        self.read_only = bool(array.store.read_only)
        self.zarr_store = array.store
        self._root = local_root
        self._dir = None if local_root is None else self.layout.chunk_dir(local_root)
        self.ndim = array.ndim
        if self.ndim == 1:
            self.shape = (1, int(array.shape[0]))
            self.block_shape = (1, int(array.chunks[0]))
        else:
            self.shape = (int(array.shape[0]), int(array.shape[1]))
            self.block_shape = (int(array.chunks[0]), int(array.chunks[1]))
        self.grid_shape = (
            -(-self.shape[0] // self.block_shape[0]),
            -(-self.shape[1] // self.block_shape[1]),
        )
        self.dtype = np.dtype(array.dtype)

    # ------------------------------------------------------------------ geometry
    def block_bounds(self, coords: BlockCoords) -> tuple[slice, slice]:
        """The rows and columns block ``coords`` covers."""
        (i, j), (br, bc), (n0, n1) = coords, self.block_shape, self.shape
        rows, cols = block_range(i, br, n0), block_range(j, bc, n1)
        return slice(rows.start, rows.stop), slice(cols.start, cols.stop)

    def chunk_index(self, coords: BlockCoords) -> tuple[int, ...]:
        """The zarr chunk index of block ``coords`` (``(j,)`` for a 1-D array)."""
        return (coords[1],) if self.ndim == 1 else (coords[0], coords[1])

    def chunk_key(self, coords: BlockCoords) -> str:
        """The store key of block ``coords`` (:mod:`infl_array.storage.layout`)."""
        return self.layout.chunk_key(self.chunk_index(coords))

    def _chunk_parts(self, coords: BlockCoords) -> tuple[str, ...]:
        return tuple(str(c) for c in self.chunk_index(coords))

    def _selection(self, rows: Any, cols: Any) -> tuple[Any, ...]:
        return (cols,) if self.ndim == 1 else (rows, cols)

    # ------------------------------------------------------------------ which blocks exist
    def list_computed(self, rows: Iterable[int] | None = None) -> set[BlockCoords]:
        """Every block whose chunk exists (temporary files of killed writers are ignored).

        With ``rows``, only those block rows are listed (one listing each: on an object store,
        reading a few rows of a large store does not list all of it).
        """
        found: set[BlockCoords] = set()
        if self._dir is not None:
            found = _list_local(self._dir, self.ndim, None if rows is None else set(rows))
        else:
            lay = self.layout
            prefixes = [lay.chunk_prefix]
            if rows is not None and self.ndim == 2:
                prefixes = [lay.chunk_row_prefix(i) for i in rows]
            for prefix in prefixes:
                for key in list_prefix(self.zarr_store, prefix):
                    chunk = lay.chunk_of(key)
                    if chunk is not None:
                        found.add((0, chunk[0]) if self.ndim == 1 else (chunk[0], chunk[1]))
        g0, g1 = self.grid_shape
        return {c for c in found if c[0] < g0 and c[1] < g1}

    def has_blocks(self, coords: Iterable[BlockCoords]) -> set[BlockCoords]:
        """The subset of ``coords`` that is computed (one existence check each)."""
        coords = list(coords)
        if self._dir is not None:
            root = self._dir
            return {c for c in coords if os.path.isfile(root.joinpath(*self._chunk_parts(c)))}
        return {c for c in coords if key_exists(self.zarr_store, self.chunk_key(c))}

    # ------------------------------------------------------------------ writes
    def check_writable(self, coords: BlockCoords | None = None) -> None:
        """``PermissionError`` (naming ``coords``, if given) unless blocks may be written."""
        if not self.read_only:
            return
        what = f"block {coords}" if coords is not None else "missing blocks"
        raise PermissionError(
            errno.EACCES,
            f"cannot write {what}: the store {self.where} is read-only (a read-only directory "
            "or a zarr store opened with read_only=True). Nothing was written. Read the blocks "
            "already computed with ia.open(store), or copy the store to a writable location "
            "and open that to compute.",
        )

    def write_block(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Write one whole block atomically (one chunk-aligned zarr assignment).

        ``values`` has the block's 2-D shape. A failed write (full disk, no permission, ...)
        raises an ``OSError`` of the same type and errno that names the block, with the
        original as ``__cause__``; nothing is stored for the block and every other block is
        untouched.
        """
        self.check_writable(coords)
        self._check_edge_current(coords)
        rows, cols = self.block_bounds(coords)
        try:
            with empty_chunks_kept():
                if self.ndim == 1:
                    self.array[cols] = values[0]
                else:
                    self.array[rows, cols] = values
        except OSError as exc:
            raise write_error(exc, coords, self.where) from exc

    def write_run(self, coords: list[BlockCoords], values: list[np.ndarray]) -> None:
        """Write a run of whole blocks with one zarr assignment (:func:`run_region`).

        ``coords`` are consecutive blocks of one block row or one block column (as
        :func:`extends_run` grows them), ``values`` their 2-D values. zarr writes the run's
        chunks concurrently, each with its own atomic chunk write, so every block is complete
        in the store or absent, as with :meth:`write_block`. A failed write is retried block by
        block, so an error names the block that cannot be written (the blocks before it are
        stored).
        """
        if len(coords) == 1:
            self.write_block(coords[0], values[0])
            return
        self.check_writable(coords[0])
        for c in coords:
            self._check_edge_current(c)
        rows, cols, axis = run_region(coords, self.block_shape, self.shape)
        try:
            with empty_chunks_kept():
                if self.ndim == 1:
                    self.array[cols] = np.concatenate([v[0] for v in values])
                else:
                    self.array[rows, cols] = np.concatenate(values, axis=axis)
        except OSError:
            for c, v in zip(coords, values, strict=True):  # names the block that fails
                self.write_block(c, v)

    def _check_edge_current(self, coords: BlockCoords) -> None:
        """A partial last block along a data axis is written only while no append has grown
        that axis since this grid was opened (its chunk would be stored short otherwise,
        :func:`~infl_array.storage.segments.check_not_grown`): one listing, edge blocks only."""
        edges = {}
        for d, index in enumerate(self.chunk_index(coords)):
            name, n, length = (
                self.layout.dimension_names[d],
                self.array.shape[d],
                self.array.chunks[d],
            )
            if name in layout.FACTOR_SIDES and n % length and (index + 1) * length >= n:
                edges[name] = int(n)
        if edges:
            what = self.layout.block_name(self.chunk_index(coords))
            check_not_grown(self.zarr_store, self.where, edges, f"{self.name} {what} computed here")

    # ------------------------------------------------------------------ reads
    def read_block(self, coords: BlockCoords) -> np.ndarray:
        """Decode one block (2-D); ``CorruptBlockError`` if it fails its checksum or decode."""
        rows, cols = self.block_bounds(coords)
        try:
            out = np.asarray(self.array[self._selection(rows, cols)])
        except OSError as exc:  # the request failed, not the stored bytes
            what = f"read {self.layout.block_name(self.chunk_index(coords))} of {self.name!r}"
            raise storage_error(exc, what, self.where) from exc
        except Exception as exc:
            raise self._corrupt(coords, exc) from exc
        return out.reshape(rows.stop - rows.start, cols.stop - cols.start)

    def _corrupt(self, coords: BlockCoords, exc: BaseException) -> CorruptBlockError:
        what = self.layout.block_name(self.chunk_index(coords))
        if self.layout != layout.MATRIX:
            what += f" of {self.name!r}"
        return CorruptBlockError(
            coords,
            f"{what} of {self.where} is corrupt: its stored bytes fail their checksum "
            f"or do not decode ({type(exc).__name__}: {exc}). Call arr.repair() with a model or "
            "function to recompute it (arr.store_report() lists every damaged block).",
        )

    def read_region(self, rows: Any, cols: Any, blocks: Iterable[BlockCoords]) -> np.ndarray:
        """The orthogonal selection ``rows x cols`` (2-D), naming the corrupt block on failure."""
        try:
            out = np.asarray(self.array.get_orthogonal_selection(self._selection(rows, cols)))
        except OSError as exc:
            raise storage_error(exc, f"read from {self.name!r}", self.where) from exc
        except Exception:
            self._raise_first_corrupt(blocks)
            raise
        return out[None, :] if self.ndim == 1 else out

    def read_coordinates(
        self, rows: np.ndarray, cols: np.ndarray, blocks: Iterable[BlockCoords]
    ) -> np.ndarray:
        """The points ``(rows[k], cols[k])`` as a 1-D array."""
        try:
            return np.asarray(self.array.get_coordinate_selection(self._selection(rows, cols)))
        except OSError as exc:
            raise storage_error(exc, f"read from {self.name!r}", self.where) from exc
        except Exception:
            self._raise_first_corrupt(blocks)
            raise

    def _raise_first_corrupt(self, blocks: Iterable[BlockCoords]) -> None:
        for coords in sorted(blocks):
            self.read_block(coords)  # raises CorruptBlockError for the first bad block

    def verify_block(self, coords: BlockCoords) -> bool:
        """True when the block decodes, passes its checksum and holds only finite values."""
        return self.block_problem(coords) is None

    def block_problem(self, coords: BlockCoords) -> str | None:
        """What is wrong with a stored block, or None when it decodes, passes its checksum and
        holds only finite values."""
        try:
            values = self.read_block(coords)
        except CorruptBlockError as exc:
            cause = exc.__cause__
            return f"fails its checksum or does not decode ({type(cause).__name__}: {cause})"
        if not np.isfinite(values).all():
            return "holds non-finite values (no computed block does)"
        return None

    def delete_block(self, coords: BlockCoords) -> None:
        """Remove a block's chunk: the block counts as not computed (the next read or fill
        computes it). For damaged blocks; nothing else deletes blocks."""
        self.check_writable(coords)
        delete_key(self.zarr_store, self.chunk_key(coords))

    # ------------------------------------------------------------------ housekeeping
    def clean_partials(self, min_age_s: float = PARTIAL_MIN_AGE_S) -> int:
        """Remove temporary block files of dead writers; returns how many were removed.

        zarr's local store writes a block to ``<j>.<uuid4 hex>.partial`` next to its final key
        and renames it into place; a writer killed in between leaves that file behind. Such
        files are never read as blocks, they only take space. The rule: a ``.partial`` file
        under this array's chunk directory is removed only when its last modification is at
        least ``min_age_s`` seconds old (default one hour). A live writer creates, writes (one
        write call for the whole encoded block) and renames its file within the time it takes
        to write one block, seconds at most, so an hour-old file has no live writer. Should a
        writer resume after being suspended for longer (SIGSTOP, a sleeping laptop), its rename
        fails and that block write raises: the block is absent, never wrong, and a later
        ``fill()`` computes it. Stores that are not local directories have no such files.
        Claim objects (:mod:`infl_array.storage.claims`) are written the same way and cleaned alike.
        Files that vanish or cannot be removed meanwhile are skipped.
        """
        if self._dir is None or self.read_only:
            return 0
        cutoff = time.time() - min_age_s
        removed = 0
        assert self._root is not None
        claims = str(self.layout.claims_dir(self._root))  # claim objects are written alike
        for folder in [*_chunk_folders(self._dir, self.ndim), claims]:
            pattern = layout.PARTIAL_CLAIM if folder == claims else layout.PARTIAL_BLOCK
            try:
                with os.scandir(folder) as entries:
                    partials = [e for e in entries if pattern.match(e.name)]
            except OSError:
                continue
            for entry in partials:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                        continue
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed += 1
        return removed

    def stored_bytes(self) -> int:
        """Bytes of all stored blocks (a walk of a local directory, one listing elsewhere)."""
        if self._dir is None:
            return size_under(self.zarr_store, self.layout.chunk_prefix)
        total = 0
        for dirpath, _, files in os.walk(self._dir):
            for name in files:
                if name.isdigit():
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total


def _chunk_folders(base: Path, ndim: int) -> list[str]:
    """The folders that hold chunk files: ``c/`` for 1-D arrays, ``c/<i>/`` for 2-D."""
    if ndim == 1:
        return [str(base)]
    try:
        return [r.path for r in os.scandir(base) if r.name.isdigit() and r.is_dir()]
    except OSError:
        return []


def _list_local(base: Path, ndim: int, rows: set[int] | None = None) -> set[BlockCoords]:
    found: set[BlockCoords] = set()
    if rows is not None and ndim == 2:
        folders = [str(base / str(i)) for i in sorted(rows)]
    else:
        folders = _chunk_folders(base, ndim)
    for folder in folders:
        i = 0 if ndim == 1 else int(os.path.basename(folder))
        try:
            with os.scandir(folder) as entries:
                found.update((i, int(e.name)) for e in entries if e.name.isdigit())
        except FileNotFoundError:
            continue
    return found


def write_error(exc: OSError, coords: BlockCoords, where: str) -> OSError:
    """``exc`` restated to name the block and the fix, keeping its type and errno."""
    message = (
        f"could not write block {coords} to the store {where}: {_reason(exc)}. Nothing was "
        "stored for this block and the blocks already in the store are intact; "
        f"{_fix(exc)}, then call arr.fill() again to compute the missing blocks."
    )
    return _restated(exc, message)


def create_error(exc: OSError, name: str, where: str) -> OSError:
    """``exc``, raised while creating the array ``name`` beside the matrix (its metadata),
    restated to name the array and the fix, keeping its type and errno."""
    message = (
        f"could not create the array {name!r} in the store {where}: {_reason(exc)}. The "
        f"blocks already in the store are intact; {_fix(exc)}, then try again."
    )
    return _restated(exc, message)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _fix(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "free disk space (or move the store)"
    if isinstance(exc, PermissionError):
        return "make the store writable (or copy it to a writable location)"
    return "fix the storage problem"


def _restated(exc: OSError, message: str) -> OSError:
    """An error of ``exc``'s type and errno with ``message``."""
    try:
        return type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message)
    except Exception:
        return OSError(exc.errno, message)
