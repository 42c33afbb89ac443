"""The derived nodes of a store and their zarr metadata: found, checked, opened, deleted.

Beside the matrix, a store holds arrays derived from it or from the model (the self-influence,
the factors, the top-k arrays) in groups of their own (``factors``, ``topk``, ...). Every one of
them can be computed again, so damage to its zarr metadata (a ``zarr.json`` truncated, bit
flips, deleted while its chunks remain) is repaired by deleting the node and everything in it:
the next read or fill that needs it creates it anew. (The store's own metadata and the
matrix's are not derived: damage to them is a ``NotAStoreError`` at ``ia.open``.)

- :func:`damaged_nodes` lists the derived nodes whose metadata does not decode, and the
  layout-named arrays whose chunks remain without metadata;
- :func:`array_paths` lists the arrays whose metadata decodes (none inside a damaged node), by
  reading the metadata objects, so a damaged one never stops the listing;
- :func:`open_node` opens one derived node, turning undecodable metadata into a
  ``NotAStoreError`` that names the node and the fix;
- :func:`delete_node` deletes a node and everything under it.

This module knows zarr's store interface (through :mod:`infl_array.storage.zarr_compat`).
"""

from __future__ import annotations

import json
from typing import Any

import zarr

from infl_array.errors import NotAStoreError
from infl_array.storage import layout
from infl_array.storage.zarr_compat import (
    delete_key,
    list_prefix,
    lossy_codec_warning_silenced,
    read_key,
)

__all__ = ["METADATA", "array_paths", "damaged_nodes", "delete_node", "is_named", "open_node"]

METADATA = "zarr.json"
"""The name of a node's metadata object."""

_NOT_DERIVED = ("", layout.MATRIX.path)
"""Nodes whose damage is not repaired here: the group itself and the matrix."""

FIX = (
    "It holds derived values only: arr.repair() deletes it, and the next read or fill that "
    "needs it computes it again (arr.store_report() lists every damaged object)."
)


def _node_of(key: str) -> str | None:
    """The node path of a metadata key (``"factors/test/zarr.json"`` -> ``"factors/test"``)."""
    if key == METADATA:
        return ""
    return key.removesuffix("/" + METADATA) if key.endswith("/" + METADATA) else None


def _metadata(raw: bytes | None) -> dict[str, Any] | None:
    """The decoded metadata object, or None when ``raw`` is not one."""
    try:
        found = json.loads(raw or b"")
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return None
    ok = isinstance(found, dict) and found.get("node_type") in ("array", "group")
    return found if ok else None


def _scan(zarr_store: Any) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str]]]:
    """(decoded metadata by node path, damage as (node, key, problem)), derived nodes only."""
    keys = list_prefix(zarr_store, "")
    good: dict[str, dict[str, Any]] = {}
    damaged: list[tuple[str, str, str]] = []
    for key in sorted(keys):
        node = _node_of(key)
        if node is None or node in _NOT_DERIVED:
            continue
        meta = _metadata(read_key(zarr_store, key))
        if meta is None:
            damaged.append((node, key, "zarr metadata that does not decode"))
        else:
            good[node] = meta
    for path in _orphans(keys, good, damaged):
        key = f"{path}/{METADATA}"
        damaged.append((path, key, "is missing while the array's chunks remain"))
    return good, [(_unit(node), key, problem) for node, key, problem in damaged]


def _unit(node: str) -> str:
    """What is deleted for damage to ``node``: a top-k array's values and indices go together
    (each is useless without the other), any other node alone."""
    parent, _, name = node.rpartition("/")
    top_k = parent.startswith(layout.TOPK_GROUP + "/") and name in ("values", "indices")
    return parent if top_k else node


def _orphans(
    keys: list[str], good: dict[str, Any], damaged: list[tuple[str, str, str]]
) -> list[str]:
    """Layout-named arrays with chunks but no metadata object."""
    seen = set(good) | {node for node, _, _ in damaged}
    found = set()
    for key in keys:
        head, sep, _ = key.partition("/c/")
        if sep and head not in seen and head not in _NOT_DERIVED and is_named(head):
            found.add(head)
    return sorted(found)


def is_named(path: str) -> bool:
    """Whether ``path`` is an array :mod:`infl_array.storage.layout` names."""
    try:
        layout.array_layout(path)
    except ValueError:
        return False
    return True


def _inside(path: str, nodes: set[str]) -> bool:
    """Whether ``path`` is one of ``nodes`` or lies under one."""
    return any(path == n or path.startswith(n + "/") for n in nodes)


def damaged_nodes(zarr_store: Any) -> list[tuple[str, str, str]]:
    """Every derived node with damaged or missing metadata: ``(node path, key, problem)``.

    A node inside a damaged one is not listed (deleting the outer one deletes it).
    """
    found = _scan(zarr_store)[1]
    outer = {node for node, _, _ in found}
    return [d for d in found if not _inside(d[0], outer - {d[0]})]


def array_paths(zarr_store: Any) -> list[str]:
    """The path of every derived array whose metadata decodes, none inside a damaged node."""
    good, damaged = _scan(zarr_store)
    bad = {node for node, _, _ in damaged}
    return sorted(p for p, m in good.items() if m["node_type"] == "array" and not _inside(p, bad))


def open_node(group: zarr.Group, name: str, where: str) -> Any:
    """The node ``name`` of ``group``, or None when it does not exist.

    ``NotAStoreError`` (naming the node and the fix) when its metadata, or a parent group's,
    does not decode.
    """
    try:
        with lossy_codec_warning_silenced():
            if name not in group:
                return None
            return group[name]
    except (ValueError, TypeError, KeyError) as exc:
        raise NotAStoreError(
            f"{where}: the zarr metadata of {name!r} (or of a group above it) is damaged "
            f"({type(exc).__name__}: {exc}). {FIX}"
        ) from exc


def delete_node(zarr_store: Any, path: str) -> int:
    """Delete the node ``path`` and everything under it; returns how many objects."""
    if path in _NOT_DERIVED:
        raise ValueError(f"only derived nodes are deleted here; got {path!r}")
    keys = list_prefix(zarr_store, path + "/")
    for key in keys:
        delete_key(zarr_store, key)
    return len(keys)
