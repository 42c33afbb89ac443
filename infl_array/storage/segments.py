"""Appended segments: the record of every growth of a store's test or train axis.

``arr.append_train(data)`` and ``arr.append_test(data)`` grow the matrix along one axis. Each
append is one :class:`Segment`, recorded as the small JSON object
``influence/segments/<test|train>/<n>.json`` (:func:`infl_array.storage.layout.segment_key`;
``n`` counts from 1, segment 0 being the data the store was created with, whose fingerprint the
store's metadata holds): the range of indices it added, the fingerprint of its data, when, and
what curvature its values use (the one fitted before it: appending never refits).

Commit protocol
---------------
An append (:mod:`infl_array.storage.growth`) first puts the store in a state that is valid
under the old shape and ready for the new one (it deletes the chunks of the last, partial
blocks and keeps stale top-k rows aside), then writes the segment record: **the record is the
commit point**. After it, the arrays whose axis grew are resized and the metadata's shape is
rewritten; :func:`settled_meta`, called by every ``open``, finishes those two steps when a
writer was killed between them (both are idempotent), so a store is always seen either as it
was before an append or as it is after it. A store whose record is written but whose arrays
are not resized yet cannot be opened read-only (nothing may be written there): opening it once
writable settles it.

This module knows zarr's group and store interface (through
:mod:`infl_array.storage.zarr_compat`) and numpy, not torch.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import zarr

from infl_array.errors import NotAStoreError, StaleCacheError
from infl_array.storage import layout
from infl_array.storage.meta import StoreMeta
from infl_array.storage.zarr_compat import (
    list_prefix,
    lossy_codec_warning_silenced,
    read_key,
    write_key,
)

__all__ = [
    "CURVATURE_NOTE",
    "Segment",
    "check_not_grown",
    "created_shape",
    "grown_shape",
    "read_segments",
    "settled_meta",
    "write_segment",
]

CURVATURE_NOTE = (
    "the curvature fitted before this segment: its points are not in the fitted Hessian. Refit "
    "(and create a new store) when the appended points change the training distribution or "
    "grow the training set by more than a small fraction."
)
"""What each train segment records about the curvature its values use."""


@dataclass(frozen=True)
class Segment:
    """One appended range of an axis.

    Attributes
    ----------
    side : str
        ``"test"`` or ``"train"``: the axis that grew.
    index : int
        1 for the first append to that axis, 2 for the next, ...
    start, stop : int
        The indices the segment added, ``start:stop``.
    fingerprint : str or None
        The fingerprint of the appended data (None for a block function, which has no data).
    created : str
        When it was appended (UTC, ISO 8601).
    curvature : str
        Which curvature its values use (:data:`CURVATURE_NOTE` for train segments).

    Examples
    --------
    >>> s = Segment("train", 1, 100, 110, "ab", "2026-01-01T00:00:00Z", "fitted")
    >>> Segment.from_json(s.to_json(), "here") == s, s.span, str(s)
    (True, range(100, 110), 'train segment 1 (100:110)')
    """

    side: str
    index: int
    start: int
    stop: int
    fingerprint: str | None
    created: str
    curvature: str = ""

    def __post_init__(self) -> None:
        if self.side not in layout.FACTOR_SIDES or not 0 <= self.start < self.stop:
            raise ValueError(
                f"a segment has side 'test' or 'train' and a non-empty range start:stop; got "
                f"side={self.side!r}, {self.start}:{self.stop}."
            )

    @property
    def span(self) -> range:
        """The indices the segment added."""
        return range(self.start, self.stop)

    @property
    def key(self) -> str:
        """Its key in the store."""
        return layout.segment_key(self.side, self.index)

    def __str__(self) -> str:
        return f"{self.side} segment {self.index} ({self.start}:{self.stop})"

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "curvature": self.curvature,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any], where: str) -> Segment:
        try:
            fingerprint = record["fingerprint"]
            return cls(
                side=str(record["side"]),
                index=int(record["index"]),
                start=int(record["start"]),
                stop=int(record["stop"]),
                fingerprint=None if fingerprint is None else str(fingerprint),
                created=str(record["created"]),
                curvature=str(record.get("curvature", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotAStoreError(
                f"{where} has a damaged segment record ({type(exc).__name__}: {exc}); expected "
                '{"side", "index", "start", "stop", "fingerprint", "created"}. The store '
                "cannot tell which data its appended rows or columns belong to; recreate it "
                "with overwrite=True."
            ) from exc

    @classmethod
    def new(cls, side: str, index: int, span: range, fingerprint: str | None) -> Segment:
        """The record of appending ``span`` to ``side`` now."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        curvature = CURVATURE_NOTE if side == "train" else ""
        return cls(side, index, span.start, span.stop, fingerprint, created, curvature)


def read_segments(zarr_store: Any, where: str) -> list[Segment]:
    """Every segment recorded in the store, test before train, each side in order.

    ``NotAStoreError`` when a record does not decode or the ranges of a side do not follow one
    another.
    """
    keys = list_prefix(zarr_store, layout.SEGMENTS_PREFIX)  # one listing for both sides
    found: list[Segment] = []
    for side in layout.FACTOR_SIDES:
        prefix = layout.segments_prefix(side)
        records = []
        for key in keys:
            name = key.removeprefix(prefix)
            if key.startswith(prefix) and name.endswith(".json") and name[:-5].isdigit():
                records.append(_decode(read_key(zarr_store, key), key, where))
        records.sort(key=lambda s: s.index)
        for before, after in itertools.pairwise(records):
            if after.start != before.stop or after.index != before.index + 1:
                raise NotAStoreError(
                    f"{where}: the {side} segments do not follow one another ({before} then "
                    f"{after}); the store's segment records are damaged. Recreate it with "
                    "overwrite=True."
                )
        found += records
    return found


def _decode(raw: bytes | None, key: str, where: str) -> Segment:
    try:
        record = json.loads(raw or b"")
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {}
    return Segment.from_json(record, f"{where} ({key})")


def write_segment(zarr_store: Any, segment: Segment) -> None:
    """Record ``segment`` (the commit point of an append, see the module docstring)."""
    write_key(zarr_store, segment.key, json.dumps(segment.to_json(), sort_keys=True).encode())


def check_not_grown(zarr_store: Any, where: str, sizes: Mapping[str, int], what: str) -> None:
    """``StaleCacheError`` when the store grew past ``sizes`` (side: the points a handle opened
    before an append holds) along a side: ``what`` (computed over those points only) would be
    stored short of the appended points. Nothing is written; the fix is to reopen."""
    late = [s for s in read_segments(zarr_store, where) if s.stop > sizes.get(s.side, s.stop)]
    if late:
        held = ", ".join(f"{side} {n}" for side, n in sizes.items())
        raise StaleCacheError(
            [str(s) for s in late],
            f"{where} grew since this array was opened ({', '.join(map(str, late))}), but it "
            f"holds the points it had then ({held}): {what} would miss the appended points, so "
            "nothing was written. Reopen the store "
            "(ia.open(store, model, test=..., train=...) with the grown data) or, in the "
            "process that appended, ask the grown array again (arr.top_k_array(...), "
            "arr.self_influence()).",
        )


def grown_shape(shape: tuple[int, int], segments: list[Segment]) -> tuple[int, int]:
    """The matrix's shape once every segment is appended (``shape`` beyond the last ones).

    >>> s = Segment("train", 1, 10, 15, None, "t")
    >>> grown_shape((4, 10), [s]), grown_shape((4, 15), [s])
    ((4, 15), (4, 15))
    """
    sizes = list(shape)
    for s in segments:
        axis = layout.FACTOR_SIDES.index(s.side)
        sizes[axis] = max(sizes[axis], s.stop)
    return (sizes[0], sizes[1])


def created_shape(shape: tuple[int, int], segments: list[Segment]) -> tuple[int, int]:
    """The matrix's shape when the store was created (before its first segments).

    >>> created_shape((4, 15), [Segment("train", 1, 10, 15, None, "t")])
    (4, 10)
    """
    sizes = list(shape)
    for s in segments:
        axis = layout.FACTOR_SIDES.index(s.side)
        sizes[axis] = min(sizes[axis], s.start)
    return (sizes[0], sizes[1])


def settled_meta(group: zarr.Group, meta: StoreMeta, where: str, read_only: bool) -> StoreMeta:
    """The store's metadata once every recorded segment is appended, finishing an append that
    was killed after its commit point (see the module docstring)."""
    shape = grown_shape(meta.shape, read_segments(group.store, where))
    if shape == meta.shape:
        return meta
    if read_only:
        raise NotAStoreError(
            f"{where}: an append to the store was interrupted after it was recorded and before "
            f"its arrays grew to {shape}, and it was opened read-only, so it cannot finish it. "
            "Open it once with its model, ia.open(store, model, test=..., train=...) (or "
            "fn=...) on a writable location: that finishes the append."
        )
    sizes = dict(zip(layout.FACTOR_SIDES, shape, strict=True))
    with lossy_codec_warning_silenced():
        members = list(group.members(max_depth=None))
    for path, node in members:
        if isinstance(node, zarr.Array) and _grows_with_axes(path):
            names = node.metadata.dimension_names or ()  # type: ignore[union-attr]
            want = tuple(sizes.get(str(n), size) for n, size in zip(names, node.shape, strict=True))
            if want != tuple(node.shape):
                node.resize(want)
    settled = replace(meta, shape=shape)
    group.attrs.update({layout.ATTRS_KEY: settled.to_json()})
    return settled


def _grows_with_axes(path: str) -> bool:
    """Whether the array at ``path`` grows with the matrix: every array the layout names but
    top-k bases, which keep the rows they held."""
    try:
        layout.array_layout(path)
    except ValueError:
        return False
    top_k = layout.top_k_part(path)
    return top_k is None or top_k[0].covered is None
