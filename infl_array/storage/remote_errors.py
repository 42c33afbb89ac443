"""Errors of URL stores explained: a misspelt ``storage_options`` key, missing credentials.

fsspec builds a URL store's file system lazily, so a wrong option or absent credentials surface
at the first request, as a ``TypeError`` from deep inside the client (``AioSession.__init__()
got an unexpected keyword argument 'endpoint_ur'``) or a client-library error (botocore's
``NoCredentialsError: Unable to locate credentials``) that names neither the store nor the fix.
:func:`explained_url_errors` wraps a store's first contact and re-raises those two as
:class:`StorageOptionsError` and ``PermissionError`` naming the URL, the option and the fix.
This module knows fsspec, never a particular client library.
"""

from __future__ import annotations

import difflib
import errno
import inspect
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["StorageOptionsError", "explain_url_error", "explained_url_errors", "storage_error"]

_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


class StorageOptionsError(TypeError):
    """``storage_options`` holds an option the URL's file system does not take.

    ``option`` is the offending key.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def _known_options(url: str) -> list[str]:
    """The keyword arguments the file system of ``url``'s protocol takes (best effort)."""
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(url.split("://", 1)[0])
    except (ImportError, ValueError):
        return []
    names = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    }
    return sorted(names)


def explain_url_error(
    exc: BaseException, url: str, storage_options: Mapping[str, Any] | None
) -> Exception | None:
    """The explained error for ``exc`` raised while reaching ``url``, or None to keep ``exc``."""
    if isinstance(exc, StorageOptionsError):
        return None
    given = dict(storage_options or {})
    found = _UNEXPECTED.search(str(exc)) if isinstance(exc, TypeError) else None
    if found is not None and found.group(1) in given:
        option = found.group(1)
        near = difflib.get_close_matches(option, _known_options(url), n=1)
        hint = f"Did you mean {near[0]!r}? " if near else ""
        return StorageOptionsError(
            option,
            f"storage_options for {url!r} has the option {option!r}, which its file system "
            f"does not take ({exc}). {hint}Check the spelling against the fsspec file system "
            "of that URL (for s3://: endpoint_url, key, secret, token, anon, client_kwargs).",
        )
    if "credential" in type(exc).__name__.lower():
        return PermissionError(
            errno.EACCES,
            f"no credentials to reach {url!r} ({type(exc).__name__}: {exc}). Pass them in "
            "storage_options (e.g. {'key': ..., 'secret': ...} for s3://), set the client's "
            "environment variables (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or pass "
            "storage_options={'anon': True} for a public bucket.",
        )
    return None


def storage_error(exc: OSError, what: str, where: str) -> OSError:
    """``exc``, a failed request to the storage (an S3 500 or 503, a timeout, an I/O error),
    restated to name the store and what was being done, keeping its errno (and so its type).

    Without it such an error reaches the user bare (``OSError: [Errno 121] Internal Server
    Error``) or, worse, as damage (a block "corrupt", a store to recreate), when the stored
    data is fine and a retry is the fix.
    """
    reason = f"{type(exc).__name__}: {exc.strerror or exc}"
    message = (
        f"{where}: could not {what}: the storage failed the request ({reason}). The request "
        "failed, not the stored data: such failures are often temporary (a busy or "
        "unreachable server), so retry; for a URL store, the client's retries can be raised "
        "in storage_options (for s3://: config_kwargs={'retries': {'max_attempts': 10}})."
    )
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


@contextmanager
def explained_url_errors(store: Any, storage_options: Mapping[str, Any] | None) -> Iterator[None]:
    """Re-raise a misspelt option or missing credentials of URL ``store`` explained."""
    try:
        yield
    except Exception as exc:
        if not isinstance(store, str) or "://" not in store:
            raise
        better = explain_url_error(exc, store, storage_options)
        if better is None:
            raise
        raise better from exc
