"""The few places where infl_array depends on zarr's version or its asynchronous store API.

* :func:`keep_empty_chunks` / :func:`empty_chunks_kept`: every block write must store a chunk
  (``write_empty_chunks`` on), set per array on zarr >= 3.1.6 and around each write before.
* :func:`lossy_codec_warning_silenced`: BitRound is a numcodecs codec outside the zarr v3 spec;
  using it is documented, so zarr's warning about it is not shown.
* :func:`list_prefix`, :func:`key_exists`, :func:`read_key`, :func:`write_key`,
  :func:`write_key_if_absent`, :func:`delete_key`, :func:`size_under`: zarr stores are
  asynchronous; these run one store call to completion (the one place that reaches into zarr's
  private ``sync`` runtime and buffer prototype). On a plain local directory (zarr's
  ``LocalStore`` itself, not a subclass) :func:`read_key`, :func:`write_key`,
  :func:`write_key_if_absent`, :func:`delete_key` and :func:`key_exists` do the same file
  operations as the store (its own atomic write, exclusive for :func:`write_key_if_absent`)
  in the calling thread: a claim then costs a few system calls instead of a round trip
  through zarr's event loop, which a fill's block writes keep busy.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import zarr

from infl_array.storage.remote_errors import storage_error

T = TypeVar("T")

__all__ = [
    "delete_key",
    "empty_chunks_kept",
    "keep_empty_chunks",
    "key_exists",
    "list_prefix",
    "lossy_codec_warning_silenced",
    "read_key",
    "size_under",
    "write_key",
    "write_key_if_absent",
]


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
def lossy_codec_warning_silenced() -> Iterator[None]:
    """BitRound is a numcodecs codec, outside the zarr v3 spec: documented, so not warned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        yield


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync  # zarr's private runtime: used here only

    return sync(coro)


def _where(store: Any) -> str:
    """The store named for messages: its URL or directory."""
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and path is not None:
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        return repr(f"{protocol}://{path}")
    root = getattr(store, "root", None)
    return repr(str(root)) if root is not None else type(store).__name__


def _reading(store: Any, what: str, coro: Any) -> Any:
    """``_sync(coro)``, a failed request restated to name the store (``storage_error``)."""
    try:
        return _sync(coro)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        raise storage_error(exc, what, _where(store)) from exc


def list_prefix(store: Any, prefix: str) -> list[str]:
    """Every key of ``store`` under ``prefix``."""

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return list(_reading(store, f"list the keys under {prefix!r}", collect()))


def _local_file(store: Any, key: str, write: bool = False) -> Path | None:
    """The file of ``key`` when ``store`` is exactly zarr's open ``LocalStore`` (writable, for
    a ``write``), else None (the call then goes through the store)."""
    from zarr.storage import LocalStore, _local

    if type(store) is not LocalStore or not getattr(store, "_is_open", False):
        return None
    if write and (store.read_only or not hasattr(_local, "_put")):
        return None
    return Path(store.root) / key


def _read_local(store: Any, what: str, read: Callable[[], T]) -> T:
    """``read()`` of a local file, a failed one restated as :func:`_reading` does."""
    try:
        return read()
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        raise storage_error(exc, what, _where(store)) from exc


def _put_local(path: Path, data: bytes, exclusive: bool) -> None:
    """zarr's own local write (atomic: a temporary file renamed into place)."""
    from zarr.storage._local import _put

    _put(path, _buffer(data), exclusive=exclusive)


def key_exists(store: Any, key: str) -> bool:
    """Whether ``key`` exists in ``store``."""
    what = f"check whether {key!r} exists"
    path = _local_file(store, key)
    if path is not None:
        return _read_local(store, what, path.is_file)
    return bool(_reading(store, what, store.exists(key)))


def _buffer(data: bytes) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def read_key(store: Any, key: str) -> bytes | None:
    """The bytes stored under ``key``, or None when there are none."""
    from zarr.core.buffer import default_buffer_prototype

    path = _local_file(store, key)
    if path is not None and not path.is_dir():
        return _read_local(store, f"read {key!r}", lambda: _file_bytes(path))
    found = _reading(store, f"read {key!r}", store.get(key, default_buffer_prototype()))
    return None if found is None else bytes(found.to_bytes())


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_key(store: Any, key: str, data: bytes) -> None:
    """Store ``data`` under ``key`` (replacing what is there)."""
    path = _local_file(store, key, write=True)
    if path is not None:
        _put_local(path, data, exclusive=False)
        return
    _sync(store.set(key, _buffer(data)))


def write_key_if_absent(store: Any, key: str, data: bytes) -> None:
    """Store ``data`` under ``key`` unless the key exists (atomic on local directories)."""
    path = _local_file(store, key, write=True)
    if path is not None:
        with contextlib.suppress(FileExistsError):
            _put_local(path, data, exclusive=True)
        return
    _sync(store.set_if_not_exists(key, _buffer(data)))


def delete_key(store: Any, key: str) -> None:
    """Remove ``key`` (nothing happens when it is absent)."""
    path = _local_file(store, key, write=True)
    if path is not None and not path.is_dir():
        path.unlink(missing_ok=True)
        return
    _sync(store.delete(key))


def size_under(store: Any, prefix: str) -> int:
    """Bytes stored under ``prefix``: one listing with sizes on fsspec stores (S3, GCS, ...),
    zarr's listing and sizing elsewhere."""
    fs, root = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and root is not None and hasattr(fs, "_du"):
        return int(_sync(fs._du(f"{root.rstrip('/')}/{prefix}", total=True)))
    return int(_sync(store.getsize_prefix(prefix)))
