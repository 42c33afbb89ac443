"""The store: one zarr v3 group holding the influence matrix and what belongs with it.

The layout (every key and path: the matrix ``influence``, ``self_influence``, the factors
``factors/test`` and ``factors/train``, claims, notes, temporary files and the arrays reserved
for top-k and appended segments) is documented and named in one place,
:mod:`infl_array.storage.layout`; this module and every other one build keys only through it.
The group and its arrays are readable with plain zarr.

:class:`InfluenceStore` creates and opens the group, checks what it finds (clear errors for
anything that is not an infl_array store), and hands out each array as a
:class:`~infl_array.storage.grid.BlockGrid`, which does the block I/O. Nothing mutable is shared
between writers (no "done" list in a file or in attrs): a block is computed exactly when its
chunk key exists. The fill value is NaN and blocks may not hold non-finite values, so a
computed block is never mistaken for an empty one. ``file://`` URLs are opened as local
directories, because fsspec's local file system writes in place, not atomically.

This module knows zarr and numpy, not torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec

from infl_array.errors import NotAStoreError
from infl_array.storage import layout, nodes
from infl_array.storage.grid import BlockGrid, create_error
from infl_array.storage.meta import LOSSLESS_FACTORS, Compression, StoreMeta
from infl_array.storage.remote_errors import (
    StorageOptionsError,
    explained_url_errors,
    storage_error,
)
from infl_array.storage.segments import check_not_grown, settled_meta
from infl_array.storage.zarr_compat import lossy_codec_warning_silenced

__all__ = ["InfluenceStore", "describe_store", "local_path"]


class InfluenceStore:
    """An open infl_array store (see the module docstring).

    Attributes
    ----------
    spec : object
        The store argument it was opened with (path, URL or zarr Store): workers reopen it.
    storage_options : dict or None
        fsspec options of a URL store (credentials, endpoint), passed on to workers.
    where : str
        How messages name the store.
    meta : StoreMeta
        What the store records about itself.
    matrix : BlockGrid
        The influence matrix.
    read_only : bool
        Whether nothing may be written.
    """

    def __init__(
        self,
        spec: Any,
        group: zarr.Group,
        matrix: zarr.Array,
        meta: StoreMeta,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.storage_options = dict(storage_options) if storage_options else None
        self.where = describe_store(spec)
        self.group = group
        self.meta = meta
        self.read_only = bool(group.store.read_only)
        self.local_root = local_path(spec)
        self.matrix = BlockGrid(matrix, self.where, self.local_root)

    @property
    def is_process_local(self) -> bool:
        """Whether the store lives only in this process (other processes cannot share it)."""
        spec = self.spec
        return (
            spec is None
            or isinstance(spec, dict | zarr.storage.MemoryStore)
            or (isinstance(spec, str) and spec.startswith("memory://"))
        )

    # ------------------------------------------------------------------ create / open
    @staticmethod
    def check_creatable(
        store: Any, *, overwrite: bool, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        """Raise unless a new store may be created at ``store`` (before any computation)."""
        with explained_url_errors(store, storage_options):
            InfluenceStore._check_creatable(store, overwrite, storage_options)

    @staticmethod
    def _check_creatable(
        store: Any, overwrite: bool, storage_options: Mapping[str, Any] | None
    ) -> None:
        store = _zarr_store(store, storage_options=storage_options)
        path = local_path(store)
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
    def create(
        cls,
        store: Any,
        meta: StoreMeta,
        *,
        overwrite: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> InfluenceStore:
        """Create a new store; ``FileExistsError`` if one exists and ``overwrite`` is false."""
        cls.check_creatable(store, overwrite=overwrite, storage_options=storage_options)
        zstore = _zarr_store(store, storage_options=storage_options)
        with explained_url_errors(store, storage_options):
            group = zarr.open_group(zstore, mode="w", zarr_format=3)
        array = _create_array(
            group,
            layout.MATRIX.path,
            meta.shape,
            meta.block_shape,
            meta.dtype,
            meta.compression,
            overwrite=True,
        )
        # attrs last: a store whose attrs exist is fully created
        group.attrs.update({layout.ATTRS_KEY: meta.to_json()})
        recorded = StoreMeta.from_json(meta.to_json(), describe_store(store))
        return cls(store, group, array, recorded, storage_options)

    @classmethod
    def open(
        cls,
        store: Any,
        *,
        read_only: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> InfluenceStore:
        """Open an existing store; clear errors for anything that is not one."""
        _check_storage_options(storage_options)
        where = describe_store(store)
        path = local_path(store)
        if path is not None:
            _check_local_dir(path, creating=False)
            if read_only is False and not os.access(path, os.W_OK):
                read_only = True
        read_only = read_only or _store_read_only(store)
        try:
            with lossy_codec_warning_silenced(), explained_url_errors(store, storage_options):
                zstore = _zarr_store(store, read_only=read_only, storage_options=storage_options)
                group = zarr.open_group(zstore, mode="r" if read_only else "r+")
        except StorageOptionsError:
            raise
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
            raise NotAStoreError(
                f"{where} is not an infl_array store: no zarr group there. Create one with "
                "InfluenceArray.create(...) or InfluenceArray.from_function(...)."
            ) from exc
        except OSError as exc:  # a failed request (S3 500, timeout): not a damaged store
            raise storage_error(exc, "open the store", where) from exc
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise NotAStoreError(
                f"{where} has damaged zarr metadata ({type(exc).__name__}: {exc}); "
                "expected a zarr v3 group written by infl_array. Recreate it with overwrite=True."
            ) from exc
        meta = settled_meta(group, _recorded_meta(group, where), where, read_only)
        return cls(store, group, _matrix_array(group, meta, where), meta, storage_options)

    # ------------------------------------------------------------------ arrays beside the matrix
    def grid(self, name: str) -> BlockGrid | None:
        """The array at path ``name``: the matrix, or :meth:`side_grid` ``(name)``."""
        return self.matrix if name == self.matrix.name else self.side_grid(name)

    def array_paths(self) -> list[str]:
        """The path of every array in the group now (nested ones too), sorted; arrays whose
        metadata (or a parent group's) is damaged are left out (:mod:`~.nodes`)."""
        return sorted([self.matrix.name, *nodes.array_paths(self.matrix.zarr_store)])

    def side_grid(self, name: str) -> BlockGrid | None:
        """The 1-D array ``name`` beside the matrix, or None when it does not exist yet."""
        with lossy_codec_warning_silenced():  # lossy factor arrays
            array = nodes.open_node(self.group, name, self.where)
        if array is None:
            return None
        if not isinstance(array, zarr.Array):
            raise NotAStoreError(
                f"{self.where}: {name!r} is not an array; the store is damaged. Recreate it "
                "with overwrite=True."
            )
        return BlockGrid(array, self.where, self.local_root)

    def create_side_grid(self, name: str, length: int, chunk: int) -> BlockGrid:
        """Create the 1-D array ``name`` (same codecs as the matrix, NaN fill) and return it.

        When another process created it first, the existing array is returned.
        """
        return self._create_grid(name, (length,), (chunk,), self.meta.dtype, self.meta.compression)

    def create_factor_grid(
        self, side: str, n: int, block_len: int, width: int, dtype: Any
    ) -> BlockGrid:
        """Create the factor array of ``side`` ("test" or "train"), shape ``(n, width)``.

        One chunk per block of rows (test) or columns (train), with the store's
        ``factor_compression``; without one, lossless
        (:data:`~infl_array.storage.meta.LOSSLESS_FACTORS`, with a checksum). Either way a block
        computed from stored factors equals one computed directly: lossy factors are rounded
        once, before they are used or stored (:mod:`infl_array.storage.factors`), so the
        array's codec does not round them again
        (:meth:`~infl_array.storage.meta.Compression.after_rounding`).
        When another process created it first, the existing array is returned.
        """
        if layout.FACTORS_GROUP not in self.group:
            try:
                with contextlib.suppress(zarr.errors.ContainsGroupError):
                    self.group.create_group(layout.FACTORS_GROUP)
            except OSError as exc:
                raise create_error(exc, layout.FACTORS_GROUP, self.where) from exc
        lossy = self.meta.factor_compression
        codec = LOSSLESS_FACTORS if lossy is None else lossy.after_rounding()
        return self._create_grid(
            layout.factors(side).path,
            (n, width),
            (block_len, width),
            np.dtype(dtype).name,
            codec,
        )

    def _create_grid(
        self,
        name: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: str,
        compression: Compression,
    ) -> BlockGrid:
        names = layout.array_layout(name).dimension_names
        held = dict(zip(names, shape, strict=True))
        check_not_grown(self.group.store, self.where, held, f"the array {name} created here")
        try:
            array = _create_array(self.group, name, shape, chunks, dtype, compression)
        except OSError as exc:  # a full disk, a read-only mount, a failed request
            raise create_error(exc, name, self.where) from exc
        except zarr.errors.ContainsArrayError:
            self.group = zarr.open_group(self.group.store, mode="r+")  # sees the new array
            existing = self.side_grid(name)
            assert existing is not None
            return existing
        return BlockGrid(array, self.where, self.local_root)


def _recorded_meta(group: zarr.Group, where: str) -> StoreMeta:
    """The metadata a store records; ``NotAStoreError`` when it is missing or damaged."""
    attrs = group.attrs.asdict()
    if layout.ATTRS_KEY not in attrs:
        raise NotAStoreError(
            f"{where} is a zarr group but not an infl_array store (no {layout.ATTRS_KEY!r} "
            "attribute). Open it with zarr, or create an infl_array store elsewhere."
        )
    recorded = attrs[layout.ATTRS_KEY]
    if not isinstance(recorded, Mapping):
        raise NotAStoreError(
            f"{where} has damaged infl_array metadata: attribute {layout.ATTRS_KEY!r} is a "
            f"{type(recorded).__name__}, expected a mapping. Recreate the store with "
            "overwrite=True."
        )
    return StoreMeta.from_json(recorded, where)


def _matrix_array(group: zarr.Group, meta: StoreMeta, where: str) -> zarr.Array:
    """The store's matrix, checked against its recorded metadata (``NotAStoreError`` if not)."""
    name = layout.MATRIX.path
    try:
        with lossy_codec_warning_silenced():
            array = group[name]
    except OSError as exc:  # a failed request (S3 500, timeout): not a damaged store
        if isinstance(exc, FileNotFoundError):
            raise NotAStoreError(f"{where} lacks its array {name!r} ({exc}).") from exc
        raise storage_error(exc, f"read the metadata of {name!r}", where) from exc
    except Exception as exc:
        raise NotAStoreError(
            f"{where} lacks its array {name!r} or its metadata is damaged "
            f"({type(exc).__name__}: {exc}). Recreate the store with overwrite=True."
        ) from exc
    if not isinstance(array, zarr.Array) or tuple(array.shape) != meta.shape:
        raise NotAStoreError(
            f"{where}: array {name!r} does not match the recorded shape {meta.shape}. "
            "The store is damaged; recreate it with overwrite=True."
        )
    found = (tuple(array.chunks), str(array.dtype))
    if found != (meta.block_shape, meta.dtype):
        raise NotAStoreError(
            f"{where}: array {name!r} has chunks {found[0]} and dtype {found[1]}, but "
            f"the store records block_shape {meta.block_shape} and dtype {meta.dtype}. Its "
            "metadata is damaged; recreate the store with overwrite=True."
        )
    return array


def _create_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str,
    compression: Compression,
    *,
    overwrite: bool = False,
) -> zarr.Array:
    """An array with the given codecs, NaN fill, one chunk per block."""
    np_dtype = np.dtype(dtype)
    names = layout.array_layout(name).dimension_names
    with lossy_codec_warning_silenced():
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=np_dtype,
            fill_value=np.nan,
            filters=compression.filters(np_dtype),
            serializer=BytesCodec(),
            compressors=compression.compressors(),
            dimension_names=names,
            chunk_key_encoding={"name": "default", "separator": "/"},
            overwrite=overwrite,
        )


def describe_store(store: Any) -> str:
    """A short human name for a store argument, for messages: its path or URL when it has one.

    Examples
    --------
    >>> describe_store("s3://bucket/run1.zarr")
    "'s3://bucket/run1.zarr'"
    """
    if isinstance(store, str | os.PathLike):
        return repr(os.fspath(store))
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and path is not None:
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
        return repr(f"{protocol}://{path}")
    root = getattr(store, "root", None)
    return f"{type(store).__name__}({root})" if root is not None else type(store).__name__


def _is_url(store: Any) -> bool:
    return isinstance(store, str) and "://" in store


def local_path(store: Any) -> Path | None:
    """The directory of a local store argument, or None for remote/in-memory stores."""
    if isinstance(store, os.PathLike) or (isinstance(store, str) and not _is_url(store)):
        return Path(os.fspath(store))
    if isinstance(store, str) and store.startswith("file://"):
        return Path(store[len("file://") :])
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root)
    return None


def _check_storage_options(storage_options: Any) -> None:
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(
            "storage_options must be a dict of fsspec options (e.g. {'endpoint_url': ...}); "
            f"got {type(storage_options).__name__} {storage_options!r}."
        )


def _zarr_store(
    store: Any, *, read_only: bool = False, storage_options: Mapping[str, Any] | None = None
) -> Any:
    """The argument to hand to zarr.

    ``file://`` URLs become a local directory store: zarr opens them through fsspec, whose
    local file system writes a file in place, so a writer killed mid-write would leave a
    truncated block under its final key; zarr's ``LocalStore`` writes a temporary file and
    renames it, which is atomic. Other URLs with ``storage_options`` become an fsspec store
    built with those options.
    """
    _check_storage_options(storage_options)
    if storage_options and not _is_url(store):
        raise TypeError(
            f"storage_options apply to URL stores (s3://, gs://, ...); got them with "
            f"{describe_store(store)}. Pass a URL, or leave storage_options out."
        )
    if isinstance(store, str) and store.startswith("file://"):
        return zarr.storage.LocalStore(store[len("file://") :], read_only=read_only)
    if storage_options:
        return zarr.storage.FsspecStore.from_url(
            store, storage_options=dict(storage_options), read_only=read_only
        )
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
    path = local_path(store)
    if path is not None:
        return path.is_dir() and any(path.iterdir())
    try:
        zarr.open_group(store, mode="r")
    except Exception:
        return False
    return True


def _is_infl_store(store: Any) -> bool:
    """Whether ``store`` holds an infl_array store: its group records one, or (a local store
    whose group metadata is damaged or gone) its matrix's metadata is intact."""
    try:
        group = zarr.open_group(store, mode="r")
    except Exception:
        return _has_matrix_metadata(local_path(store))
    return layout.ATTRS_KEY in group.attrs


def _has_matrix_metadata(path: Path | None) -> bool:
    """Whether the local directory ``path`` holds an infl_array matrix's intact metadata."""
    if path is None:
        return False
    try:
        meta = json.loads((path / layout.MATRIX.metadata_key).read_bytes())
    except (OSError, ValueError):
        return False
    names = meta.get("dimension_names") if isinstance(meta, dict) else None
    return names == list(layout.MATRIX.dimension_names)
