"""The zarr layer: one group per store, one chunk per block, one file write per block.

Layout (zarr v3, readable with plain zarr)::

    <store>/zarr.json               group; attrs["infl_array"] describe the store (see StoreMeta)
    <store>/influence/zarr.json     array (n_test, n_train), dimension names ("test", "train")
    <store>/influence/c/<i>/<j>     block (i, j): compressed, with a CRC32C checksum

Which blocks are computed is read from the store itself: a block is computed exactly when its
chunk key exists. Every block is written with one chunk-aligned assignment, which zarr performs
as one atomic replace (temporary file + rename on a local directory), so a key that exists always
holds a complete block, whatever crashed and however many processes fill at once. (``file://``
URLs are opened as local directories for the same reason: fsspec's local file system writes in
place.) A writer killed between creating its temporary file and renaming it leaves a
``<j>.<uuid4hex>.partial`` file next to the block; such files are never counted as blocks, and
:meth:`BlockStore.clean_partials` removes them once they are provably abandoned. Nothing
mutable is shared between writers (no "done" list in a file or in attrs). The fill value is NaN
and block functions may not return non-finite values, so a computed block is never mistaken for
an empty one (zarr's ``write_empty_chunks`` is also forced on).

This module knows zarr and numpy, not torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from infl_array.errors import CorruptBlockError, NotAStoreError

FORMAT_VERSION = 1
ARRAY_NAME = "influence"
ATTRS_KEY = "infl_array"
DIMENSION_NAMES = ("test", "train")
SUPPORTED_DTYPES = ("float32", "float64")
_CHUNK_KEY = re.compile(r"^(\d+)/(\d+)$")
# zarr's LocalStore writes a chunk to "<j>.<uuid4 hex>.partial", then renames it to "<j>"
_PARTIAL_NAME = re.compile(r"^\d+\.[0-9a-f]+\.partial$")
PARTIAL_MIN_AGE_S = 3600.0
"""Temporary block files younger than this (by mtime) may belong to a live writer."""

BlockCoords = tuple[int, int]


def library_version() -> str:
    from infl_array import __version__

    return __version__


@dataclass(frozen=True)
class Compression:
    """How blocks are compressed.

    ``keepbits=None`` (the default) is lossless: blosc (``cname``, default lz4 at level 5) with
    bit-shuffle. On influence-like float32 data (heavy-tailed, nearly random mantissas) every
    lossless codec measured lands at 1.04-1.16x; lz4 with bit-shuffle is within 1% of zstd's
    ratio and encodes 2-3x faster, so writing keeps up with computing (benchmarks/RESULTS.md).
    An integer ``keepbits`` (1..22 for float32, 1..51 for float64) first rounds each mantissa to
    that many bits (numcodecs BitRound), which bounds the relative error of every value by
    ``2 ** -(keepbits + 1)`` and makes blocks compress much better. A CRC32C checksum is always
    added, so corrupt bytes raise instead of decoding to wrong numbers.
    """

    keepbits: int | None = None
    cname: Literal["lz4", "lz4hc", "zstd", "zlib", "blosclz"] = "lz4"
    clevel: int = 5

    def __post_init__(self) -> None:
        if self.cname not in ("lz4", "lz4hc", "zstd", "zlib", "blosclz"):
            raise ValueError(
                f"cname must be one of blosc's compressors lz4, lz4hc, zstd, zlib, blosclz; "
                f"got {self.cname!r}. The default is cname='lz4'."
            )
        if self.keepbits is not None and not (
            isinstance(self.keepbits, int) and 1 <= self.keepbits <= 51
        ):
            raise ValueError(
                f"keepbits must be None (lossless) or an int in 1..51; got {self.keepbits!r}. "
                "Use e.g. Compression(keepbits=12) for a relative error below 2**-13."
            )

    @property
    def relative_error_bound(self) -> float:
        """Largest relative error of a stored value (0.0 when lossless)."""
        return 0.0 if self.keepbits is None else 2.0 ** -(self.keepbits + 1)

    def to_json(self) -> dict[str, Any]:
        return {"keepbits": self.keepbits, "cname": self.cname, "clevel": self.clevel}

    def filters(self, dtype: np.dtype[Any]) -> list[Any]:
        if self.keepbits is None:
            return []
        from zarr.codecs.numcodecs import BitRound

        limit = 22 if dtype == np.float32 else 51
        if self.keepbits > limit:
            raise ValueError(
                f"keepbits={self.keepbits} exceeds the {limit} mantissa bits of {dtype}; "
                f"use keepbits <= {limit} or keepbits=None for lossless storage."
            )
        return [BitRound(keepbits=self.keepbits)]

    def compressors(self) -> list[Any]:
        return [
            BloscCodec(cname=self.cname, clevel=self.clevel, shuffle="bitshuffle"),
            Crc32cCodec(),
        ]


@dataclass(frozen=True)
class StoreMeta:
    """What a store is: everything ``open`` needs, recorded in the group's attributes."""

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    dtype: str = "float32"
    computed_by: Mapping[str, Any] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    compression: Compression = field(default_factory=Compression)
    format_version: int = FORMAT_VERSION
    library_version: str = ""

    def __post_init__(self) -> None:
        check_shapes(self.shape, self.block_shape)
        if self.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dtype must be one of {SUPPORTED_DTYPES}; got {self.dtype!r}. "
                'Pass dtype="float32" (the default) or dtype="float64".'
            )

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (
            -(-self.shape[0] // self.block_shape[0]),
            -(-self.shape[1] // self.block_shape[1]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "library_version": self.library_version or library_version(),
            "shape": list(self.shape),
            "block_shape": list(self.block_shape),
            "dtype": self.dtype,
            "computed_by": dict(self.computed_by),
            "fingerprints": dict(self.fingerprints),
            "compression": self.compression.to_json(),
        }

    @classmethod
    def from_json(cls, attrs: Mapping[str, Any], where: str) -> StoreMeta:
        try:
            version = int(attrs["format_version"])
            if version > FORMAT_VERSION:
                raise NotAStoreError(
                    f"{where} has infl_array store format {version}, newer than this version "
                    f"of infl_array understands ({FORMAT_VERSION}); upgrade infl_array."
                )
            comp = attrs.get("compression", {})
            return cls(
                shape=_pair(attrs["shape"]),
                block_shape=_pair(attrs["block_shape"]),
                dtype=str(attrs["dtype"]),
                computed_by=dict(attrs.get("computed_by", {})),
                fingerprints={str(k): str(v) for k, v in attrs.get("fingerprints", {}).items()},
                compression=Compression(
                    keepbits=comp.get("keepbits"),
                    cname=comp.get("cname", "zstd"),
                    clevel=int(comp.get("clevel", 3)),
                ),
                format_version=version,
                library_version=str(attrs.get("library_version", "")),
            )
        except NotAStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotAStoreError(
                f"{where} has damaged infl_array metadata ({type(exc).__name__}: {exc}); "
                "expected the group attribute 'infl_array' with shape, block_shape and dtype. "
                "Recreate the store with overwrite=True."
            ) from exc


def _pair(value: Any) -> tuple[int, int]:
    a, b = value
    return (int(a), int(b))


def check_shapes(shape: Any, block_shape: Any) -> None:
    """Raise a clear error unless shape and block_shape are two positive ints each."""
    for name, value in (("shape", shape), ("block_shape", block_shape)):
        if (
            not isinstance(value, tuple | list)
            or len(value) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
        ):
            raise TypeError(
                f"{name} must be a pair of ints (n_test, n_train); got {value!r}. "
                f"Pass e.g. {name}=(256, 4096)."
            )
        if any(v <= 0 for v in value):
            raise ValueError(
                f"{name} must be positive on both axes; got {tuple(value)}. "
                + (
                    "An influence matrix needs at least one test and one train point."
                    if name == "shape"
                    else "Use blocks of at least 1 x 1, e.g. block_shape=(256, 4096)."
                )
            )


def describe_store(store: Any) -> str:
    """A short human name for a store argument, for messages."""
    if isinstance(store, str | os.PathLike):
        return repr(os.fspath(store))
    root = getattr(store, "root", None)
    return f"{type(store).__name__}({root})" if root is not None else type(store).__name__


def _is_url(store: Any) -> bool:
    return isinstance(store, str) and "://" in store


def _local_path(store: Any) -> Path | None:
    """The directory of a local store argument, or None for remote/in-memory stores."""
    if isinstance(store, os.PathLike) or (isinstance(store, str) and not _is_url(store)):
        return Path(os.fspath(store))
    if isinstance(store, str) and store.startswith("file://"):
        return Path(store[len("file://") :])
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root)
    return None


def _zarr_store(store: Any, *, read_only: bool = False) -> Any:
    """The argument to hand to zarr: ``file://`` URLs become a local directory store.

    zarr opens ``file://`` URLs through fsspec, whose local file system writes a file in place;
    a writer killed mid-write would leave a truncated block under its final key. zarr's
    ``LocalStore`` writes a temporary file and renames it, which is atomic.
    """
    if isinstance(store, str) and store.startswith("file://"):
        return zarr.storage.LocalStore(store[len("file://") :], read_only=read_only)
    return store


def _store_read_only(store: Any) -> bool:
    """Whether ``store`` is a zarr Store object opened read-only."""
    return isinstance(store, Store) and bool(store.read_only)


def _check_local_dir(path: Path, *, creating: bool) -> None:
    if path.exists() and not path.is_dir():
        raise NotAStoreError(
            f"{str(path)!r} is a file, not an infl_array store (a directory). "
            "Pass a directory path (it is created if missing)."
        )
    if not creating and not path.exists():
        raise FileNotFoundError(
            f"no infl_array store at {str(path)!r}: the directory does not exist. "
            "Create one with InfluenceArray.create(...) or InfluenceArray.from_function(...)."
        )
    if creating and path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(
            f"cannot write to {str(path)!r}: the directory is read-only. "
            "Choose a writable location, or open the existing store with ia.open(path)."
        )


def _exists(store: Any) -> bool:
    """Whether the store argument already holds anything (a zarr node or other files)."""
    path = _local_path(store)
    if path is not None:
        return path.is_dir() and any(path.iterdir())
    try:
        zarr.open_group(store, mode="r")
    except Exception:
        return False
    return True


class BlockStore:
    """An open infl_array store: block-level reads, writes and listing over a zarr array."""

    def __init__(self, store: Any, group: zarr.Group, array: zarr.Array, meta: StoreMeta) -> None:
        self.where = describe_store(store)
        self.group = group
        self.array = keep_empty_chunks(array)
        self.meta = meta
        self.read_only = bool(group.store.read_only)
        self._local_root = _local_path(store)

    # ------------------------------------------------------------------ create / open
    @staticmethod
    def check_creatable(store: Any, *, overwrite: bool) -> None:
        """Raise unless a new store may be created at ``store`` (before any computation)."""
        path = _local_path(store)
        if path is not None:
            _check_local_dir(path, creating=True)
        if _store_read_only(store):
            raise PermissionError(
                errno.EACCES,
                f"cannot create an infl_array store in {describe_store(store)}: the zarr store "
                "was opened read-only. Pass a writable store (e.g. LocalStore(path)) or a path.",
            )
        if not _exists(store):
            return
        if path is not None and not _is_infl_store(store):
            raise FileExistsError(
                f"{describe_store(store)} exists and is not an infl_array store; refusing "
                "to overwrite another program's data even with overwrite=True. Choose a new "
                "or empty directory."
            )
        if not overwrite:
            raise FileExistsError(
                f"{describe_store(store)} already exists and is not empty. Pass "
                "overwrite=True to replace it, or reopen the existing store with "
                "ia.open(store, ...)."
            )

    @classmethod
    def create(cls, store: Any, meta: StoreMeta, *, overwrite: bool = False) -> BlockStore:
        """Create a new store; ``FileExistsError`` if one exists and ``overwrite`` is false."""
        cls.check_creatable(store, overwrite=overwrite)
        dtype = np.dtype(meta.dtype)
        group = zarr.open_group(_zarr_store(store), mode="w", zarr_format=3)
        with _lossy_codec_warning_silenced():
            array = group.create_array(
                ARRAY_NAME,
                shape=meta.shape,
                chunks=meta.block_shape,
                dtype=dtype,
                fill_value=np.nan,
                filters=meta.compression.filters(dtype),
                serializer=BytesCodec(),
                compressors=meta.compression.compressors(),
                dimension_names=DIMENSION_NAMES,
                chunk_key_encoding={"name": "default", "separator": "/"},
                overwrite=True,
            )
        # attrs last: a store whose attrs exist is fully created
        group.attrs.update({ATTRS_KEY: meta.to_json()})
        return cls(store, group, array, StoreMeta.from_json(meta.to_json(), describe_store(store)))

    @classmethod
    def open(cls, store: Any, *, read_only: bool = False) -> BlockStore:
        """Open an existing store; clear errors for anything that is not one."""
        where = describe_store(store)
        path = _local_path(store)
        if path is not None:
            _check_local_dir(path, creating=False)
            if read_only is False and not os.access(path, os.W_OK):
                read_only = True
        read_only = read_only or _store_read_only(store)
        try:
            with _lossy_codec_warning_silenced():
                group = zarr.open_group(
                    _zarr_store(store, read_only=read_only), mode="r" if read_only else "r+"
                )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
            raise NotAStoreError(
                f"{where} is not an infl_array store: no zarr group there. Create one with "
                "InfluenceArray.create(...) or InfluenceArray.from_function(...)."
            ) from exc
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise NotAStoreError(
                f"{where} has damaged zarr metadata ({type(exc).__name__}: {exc}); "
                "expected a zarr v3 group written by infl_array. Recreate it with overwrite=True."
            ) from exc
        attrs = group.attrs.asdict()
        if ATTRS_KEY not in attrs:
            raise NotAStoreError(
                f"{where} is a zarr group but not an infl_array store (no {ATTRS_KEY!r} "
                "attribute). Open it with zarr, or create an infl_array store elsewhere."
            )
        recorded = attrs[ATTRS_KEY]
        if not isinstance(recorded, Mapping):
            raise NotAStoreError(
                f"{where} has damaged infl_array metadata: attribute {ATTRS_KEY!r} is a "
                f"{type(recorded).__name__}, expected a mapping. Recreate the store with "
                "overwrite=True."
            )
        meta = StoreMeta.from_json(recorded, where)
        try:
            with _lossy_codec_warning_silenced():
                array = group[ARRAY_NAME]
        except Exception as exc:
            raise NotAStoreError(
                f"{where} lacks its array {ARRAY_NAME!r} or its metadata is damaged "
                f"({type(exc).__name__}: {exc}). Recreate the store with overwrite=True."
            ) from exc
        if not isinstance(array, zarr.Array) or tuple(array.shape) != meta.shape:
            raise NotAStoreError(
                f"{where}: array {ARRAY_NAME!r} does not match the recorded shape {meta.shape}. "
                "The store is damaged; recreate it with overwrite=True."
            )
        found = (tuple(array.chunks), str(array.dtype))
        if found != (meta.block_shape, meta.dtype):
            raise NotAStoreError(
                f"{where}: array {ARRAY_NAME!r} has chunks {found[0]} and dtype {found[1]}, but "
                f"the store records block_shape {meta.block_shape} and dtype {meta.dtype}. Its "
                "metadata is damaged; recreate the store with overwrite=True."
            )
        return cls(store, group, array, meta)

    # ------------------------------------------------------------------ geometry
    def block_bounds(self, coords: BlockCoords) -> tuple[slice, slice]:
        (i, j), (br, bc) = coords, self.meta.block_shape
        n0, n1 = self.meta.shape
        return slice(i * br, min((i + 1) * br, n0)), slice(j * bc, min((j + 1) * bc, n1))

    def _key(self, coords: BlockCoords) -> str:
        return f"{ARRAY_NAME}/c/{coords[0]}/{coords[1]}"

    # ------------------------------------------------------------------ which blocks exist
    def list_computed(self) -> set[BlockCoords]:
        """Every block whose chunk exists (temporary files of killed writers are ignored)."""
        grid = self.meta.grid_shape
        found: set[BlockCoords] = set()
        if self._local_root is not None:
            base = self._local_root / ARRAY_NAME / "c"
            try:
                rows = list(os.scandir(base))
            except FileNotFoundError:
                return found
            for row in rows:
                if not (row.name.isdigit() and row.is_dir()):
                    continue
                i = int(row.name)
                with os.scandir(row.path) as entries:
                    found.update((i, int(e.name)) for e in entries if e.name.isdigit())
        else:
            for key in _sync_list(self.group.store, f"{ARRAY_NAME}/c/"):
                m = _CHUNK_KEY.match(key[len(ARRAY_NAME) + 3 :])
                if m:
                    found.add((int(m.group(1)), int(m.group(2))))
        return {c for c in found if c[0] < grid[0] and c[1] < grid[1]}

    def has_blocks(self, coords: Iterable[BlockCoords]) -> set[BlockCoords]:
        """The subset of ``coords`` that is computed (one existence check each)."""
        coords = list(coords)
        if self._local_root is not None:
            root = self._local_root / ARRAY_NAME / "c"
            return {c for c in coords if os.path.isfile(root / str(c[0]) / str(c[1]))}
        store = self.group.store
        return {c for c in coords if _sync_exists(store, self._key(c))}

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

        A failed write (full disk, no permission, ...) raises an ``OSError`` of the same type
        and errno that names the block, with the original as ``__cause__``; nothing is stored
        for the block and every other block is untouched.
        """
        self.check_writable(coords)
        rows, cols = self.block_bounds(coords)
        try:
            with empty_chunks_kept():
                self.array[rows, cols] = values
        except OSError as exc:
            raise _write_error(exc, coords, self.where) from exc

    # ------------------------------------------------------------------ reads
    def read_block(self, coords: BlockCoords) -> np.ndarray:
        """Decode one block; ``CorruptBlockError`` if its bytes fail the checksum or decode."""
        rows, cols = self.block_bounds(coords)
        try:
            out = np.asarray(self.array[rows, cols])
        except Exception as exc:
            raise self._corrupt(coords, exc) from exc
        return out

    def _corrupt(self, coords: BlockCoords, exc: BaseException) -> CorruptBlockError:
        return CorruptBlockError(
            coords,
            f"block {coords} of {self.where} is corrupt: its stored bytes fail their checksum "
            f"or do not decode ({type(exc).__name__}: {exc}). Call arr.repair() with a model or "
            "function to recompute it (arr.verify() lists every corrupt block).",
        )

    def read_region(self, selection: tuple[Any, Any], blocks: Iterable[BlockCoords]) -> np.ndarray:
        """Read an orthogonal selection through zarr, naming the corrupt block on failure."""
        try:
            return np.asarray(self.array.get_orthogonal_selection(selection))
        except Exception as exc:
            self._raise_first_corrupt(blocks, exc)
            raise

    def read_coordinates(
        self, rows: np.ndarray, cols: np.ndarray, blocks: Iterable[BlockCoords]
    ) -> np.ndarray:
        try:
            return np.asarray(self.array.get_coordinate_selection((rows, cols)))
        except Exception as exc:
            self._raise_first_corrupt(blocks, exc)
            raise

    def _raise_first_corrupt(self, blocks: Iterable[BlockCoords], exc: BaseException) -> None:
        for coords in sorted(blocks):
            self.read_block(coords)
        # no single block fails alone: not a corruption problem
        del exc

    def verify_block(self, coords: BlockCoords) -> bool:
        """True when the block decodes, passes its checksum and holds only finite values."""
        try:
            values = self.read_block(coords)
        except CorruptBlockError:
            return False
        return bool(np.isfinite(values).all())

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
        Files that vanish or cannot be removed meanwhile are skipped.
        """
        if self._local_root is None or self.read_only:
            return 0
        base = self._local_root / ARRAY_NAME / "c"
        cutoff = time.time() - min_age_s
        removed = 0
        try:
            rows = [r for r in os.scandir(base) if r.name.isdigit() and r.is_dir()]
        except OSError:
            return 0
        for row in rows:
            try:
                with os.scandir(row.path) as entries:
                    partials = [e for e in entries if _PARTIAL_NAME.match(e.name)]
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
        """Bytes of all block files (local stores; 0 where unknown)."""
        if self._local_root is None:
            return 0
        total = 0
        for dirpath, _, files in os.walk(self._local_root / ARRAY_NAME / "c"):
            for name in files:
                if name.isdigit():
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total

    # ------------------------------------------------------------------ side arrays
    def has_array_chunk(self, name: str, coords: tuple[int, ...]) -> bool:
        """Whether chunk ``coords`` of the group's array ``name`` exists."""
        parts = [str(c) for c in coords]
        if self._local_root is not None:
            return os.path.isfile(self._local_root.joinpath(name, "c", *parts))
        return _sync_exists(self.group.store, "/".join([name, "c", *parts]))

    def create_side_array(self, name: str, length: int, chunk: int) -> zarr.Array:
        """A 1-D array beside the matrix (same codecs, NaN fill), e.g. the self-influence."""
        dtype = np.dtype(self.meta.dtype)
        with _lossy_codec_warning_silenced():
            array = self.group.create_array(
                name,
                shape=(length,),
                chunks=(chunk,),
                dtype=dtype,
                fill_value=np.nan,
                filters=self.meta.compression.filters(dtype),
                serializer=BytesCodec(),
                compressors=self.meta.compression.compressors(),
                dimension_names=(DIMENSION_NAMES[1],),
                chunk_key_encoding={"name": "default", "separator": "/"},
                overwrite=False,
            )
        return keep_empty_chunks(array)


def _write_error(exc: OSError, coords: BlockCoords, where: str) -> OSError:
    """``exc`` restated to name the block and the fix, keeping its type and errno."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free disk space (or move the store)"
    elif isinstance(exc, PermissionError):
        fix = "make the store writable (or copy it to a writable location)"
    else:
        fix = "fix the storage problem"
    message = (
        f"could not write block {coords} to the store {where}: {reason}. Nothing was stored "
        "for this block and the blocks already in the store are intact; "
        f"{fix}, then call arr.fill() again to compute the missing blocks."
    )
    try:
        return type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message)
    except Exception:
        return OSError(exc.errno, message)


def keep_empty_chunks(array: zarr.Array) -> zarr.Array:
    """``array`` with zarr's ``write_empty_chunks`` on, so every block write stores a chunk.

    (Belt and braces: the NaN fill value never equals a valid block.) ``Array.with_config``
    exists from zarr 3.1.6; older 3.1.x (the numpy<2 installs) read the global config at write
    time, which :func:`empty_chunks_kept` sets around each write.
    """
    with_config = getattr(array, "with_config", None)
    return with_config({"write_empty_chunks": True}) if with_config is not None else array


def empty_chunks_kept() -> contextlib.AbstractContextManager[Any]:
    """Around a write: keep empty chunks on zarr versions without ``Array.with_config``."""
    if hasattr(zarr.Array, "with_config"):
        return contextlib.nullcontext()
    return zarr.config.set({"array.write_empty_chunks": True})


@contextlib.contextmanager
def _lossy_codec_warning_silenced() -> Iterator[None]:
    """BitRound is a numcodecs codec, outside the zarr v3 spec: documented, so not warned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        yield


def _is_infl_store(store: Any) -> bool:
    try:
        group = zarr.open_group(store, mode="r")
    except Exception:
        return False
    return ATTRS_KEY in group.attrs


# zarr stores are asynchronous; these helpers run one store call to completion.
def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync  # the one place that reaches into zarr's private runtime

    return sync(coro)


def _sync_list(store: Any, prefix: str) -> list[str]:
    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return list(_sync(collect()))


def _sync_exists(store: Any, key: str) -> bool:
    return bool(_sync(store.exists(key)))
