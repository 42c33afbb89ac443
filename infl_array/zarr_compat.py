"""The few places where infl_array depends on zarr's version or its asynchronous store API.

* :func:`keep_empty_chunks` / :func:`empty_chunks_kept`: every block write must store a chunk
  (``write_empty_chunks`` on), set per array on zarr >= 3.1.6 and around each write before.
* :func:`lossy_codec_warning_silenced`: BitRound is a numcodecs codec outside the zarr v3 spec;
  using it is documented, so zarr's warning about it is not shown.
* :func:`list_prefix` / :func:`key_exists`: zarr stores are asynchronous; these run one store
  call to completion (the one place that reaches into zarr's private ``sync`` runtime).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import zarr


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


def list_prefix(store: Any, prefix: str) -> list[str]:
    """Every key of ``store`` under ``prefix``."""

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return list(_sync(collect()))


def key_exists(store: Any, key: str) -> bool:
    """Whether ``key`` exists in ``store``."""
    return bool(_sync(store.exists(key)))
