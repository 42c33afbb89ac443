"""The layout of a store: every key and path an infl_array store holds, named here and only here.

A store is one zarr v3 group. Everything in it, by key (a path relative to the group's root;
on a local directory, the file of that name)::

    zarr.json                              the group; attrs["infl_array"]: what the store is
                                           (shape, block shape, dtype, provenance: StoreMeta)
    influence/zarr.json                    the matrix, shape (n_test, n_train), one chunk per
                                           block, dimension names ("test", "train")
    influence/c/<i>/<j>                    matrix block (i, j): compressed, CRC32C checksum
    influence/claims/u<r>x<c>.<i>.<j>      a filler's claim on unit (i, j) of r x c matrix
                                           blocks: JSON {"owner", "expires"}, deleted when its
                                           blocks are done
    influence/claims/factors.<side>.<b>    a claim on factor block b of side "test" or "train"
    influence/notes/<key>.json             a note on how the values were computed: JSON
                                           {"key", "message"}
    self_influence/zarr.json               self-influence, shape (n_train,), one chunk per train
                                           block, dimension names ("train",); made on first use
    self_influence/c/<j>                   self-influence of train block j
    self_influence/claims/u1x<c>.0.<j>     a claim on unit j of c self-influence blocks
    factors/zarr.json                      the group of stored factors (once a side is stored)
    factors/test/zarr.json                 test factors, shape (n_test, width), one chunk per
                                           test block, dimension names ("test", "factor")
    factors/test/c/<i>/0                   test factors of test block i
    factors/train/zarr.json                train factors, shape (n_train, width), likewise
    factors/train/c/<j>/0                  train factors of train block j

    topk/axis<a>-<largest|smallest>-k<k>/values    top-k values, shape (n_rows, k), one chunk
    topk/axis<a>-<largest|smallest>-k<k>/indices   per block of rows; indices int64 (written
                                                   first: a row block is stored when its
                                                   values chunk exists)
    topk/.../values/claims/<unit>                  a claim on a unit of top-k row blocks
    topk/.../upto<n>/values|indices                a top-k array's rows as they were when its
                                                   reduced axis had n points, kept by an
                                                   append: a row is brought up to date by
                                                   scanning only the points from n on
    influence/segments/<test|train>/<n>.json       appended segment n (1, 2, ...) of an axis:
                                                   its range, data fingerprint and time
                                                   (:mod:`infl_array.storage.segments`)

Temporary files, local directories only: zarr's ``LocalStore`` writes every object to
``<name>.<uuid4 hex>.partial`` beside its final name and renames it into place, so a key that
exists always holds a whole object. A writer killed in between leaves the ``.partial`` file;
such files never count as blocks or claims (:data:`PARTIAL_BLOCK`, :data:`PARTIAL_CLAIM`), and
:meth:`infl_array.storage.grid.BlockGrid.clean_partials` removes the abandoned ones.

Plain zarr readers see the group and its arrays; claims, notes and temporary files are objects
zarr does not list as nodes, so they never disturb a reader. This module is pure naming: it
knows no zarr, numpy or torch, and never touches a store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ATTRS_KEY",
    "FACTORS_GROUP",
    "FACTOR_SIDES",
    "MATRIX",
    "NOTES_PREFIX",
    "PARTIAL_BLOCK",
    "PARTIAL_CLAIM",
    "SEGMENTS_PREFIX",
    "SELF_INFLUENCE",
    "ArrayLayout",
    "TopKLayout",
    "array_layout",
    "unit_claim",
    "factor_claim",
    "factors",
    "note_key",
    "note_name",
    "segment_key",
    "segments_prefix",
    "top_k",
    "top_k_part",
]

ATTRS_KEY = "infl_array"
"""The group attribute holding what the store is (:class:`~infl_array.storage.meta.StoreMeta`)."""

FACTORS_GROUP = "factors"
"""The group of the stored factor arrays."""

FACTOR_SIDES = ("test", "train")
"""The sides factors are stored for, in the order of the matrix's axes."""

TOPK_GROUP = "topk"
"""The group of the stored top-k arrays (:mod:`infl_array.storage.topk`)."""


_CHUNKS = "c"
_BASE = "upto"
_BANDS = "bands"
_CLAIMS = "claims"
_NOTES = "notes"
_SEGMENTS = "segments"

PARTIAL_BLOCK = re.compile(r"^\d+\.[0-9a-f]+\.partial$")
"""Name of a block's temporary file (``<j>.<uuid4 hex>.partial``) in a chunk folder."""

PARTIAL_CLAIM = re.compile(r"^[0-9a-z_.]+\.[0-9a-f]{32}\.partial$")
"""Name of a claim's temporary file in a claims folder."""


@dataclass(frozen=True)
class ArrayLayout:
    """Where the pieces of one stored array live.

    Attributes
    ----------
    path : str
        The array's path in the group, e.g. ``"influence"`` or ``"factors/train"``.
    dimension_names : tuple of str
        zarr dimension names, one per axis.
    block_axes : int
        How many leading axes the blocks split: 2 for the matrix (blocks ``(i, j)``), 1 for
        the arrays with one block per test or train block (their chunk ``(b,)`` or ``(b, 0)``).

    Examples
    --------
    >>> MATRIX.chunk_key((1, 2))
    'influence/c/1/2'
    >>> factors("train").chunk_key((3, 0)), factors("train").block_name((3, 0))
    ('factors/train/c/3/0', 'train block 3')
    >>> SELF_INFLUENCE.chunk_dir(Path("/s")).as_posix(), SELF_INFLUENCE.claims_prefix
    ('/s/self_influence/c', 'self_influence/claims/')
    """

    path: str
    dimension_names: tuple[str, ...]
    block_axes: int = 1

    @property
    def metadata_key(self) -> str:
        """The key of the array's zarr metadata."""
        return f"{self.path}/zarr.json"

    @property
    def chunk_prefix(self) -> str:
        """The key prefix of every chunk (block) of the array."""
        return f"{self.path}/{_CHUNKS}/"

    def chunk_key(self, chunk: Sequence[int]) -> str:
        """The key of the chunk with zarr chunk index ``chunk`` (one int per axis)."""
        return self.chunk_prefix + "/".join(str(int(c)) for c in chunk)

    def chunk_row_prefix(self, i: int) -> str:
        """The key prefix of the chunks of block row ``i`` (2-D arrays)."""
        return f"{self.chunk_prefix}{int(i)}/"

    def chunk_of(self, key: str) -> tuple[int, ...] | None:
        """The chunk index a key names, or None for a key that is not a chunk of this array.

        >>> MATRIX.chunk_of("influence/c/3/4"), MATRIX.chunk_of("influence/c/3/4.ab12.partial")
        ((3, 4), None)
        """
        parts = key.removeprefix(self.chunk_prefix).split("/")
        if not key.startswith(self.chunk_prefix) or len(parts) != len(self.dimension_names):
            return None
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None

    def chunk_dir(self, root: Path) -> Path:
        """The folder of the chunks in a local store whose directory is ``root``."""
        return root.joinpath(*self.path.split("/"), _CHUNKS)

    @property
    def claims_prefix(self) -> str:
        """The key prefix of the claims on the array's blocks."""
        return f"{self.path}/{_CLAIMS}/"

    def claims_dir(self, root: Path) -> Path:
        """The folder of the claims in a local store whose directory is ``root``."""
        return root.joinpath(*self.path.split("/"), _CLAIMS)

    def block_name(self, chunk: Sequence[int]) -> str:
        """The block of chunk index ``chunk``, named for messages.

        >>> MATRIX.block_name((1, 2)), SELF_INFLUENCE.block_name((4,))
        ('block (1, 2)', 'train block 4')
        """
        if self.block_axes == 2:
            return f"block ({int(chunk[0])}, {int(chunk[1])})"
        return f"{self.dimension_names[0]} block {int(chunk[0])}"


MATRIX = ArrayLayout("influence", ("test", "train"), block_axes=2)
"""The influence matrix."""

SELF_INFLUENCE = ArrayLayout("self_influence", ("train",))
"""The self-influence of every train point."""


def factors(side: str) -> ArrayLayout:
    """The stored factors of ``side`` (``"test"`` or ``"train"``).

    >>> factors("test").path, factors("test").dimension_names
    ('factors/test', ('test', 'factor'))
    """
    if side not in FACTOR_SIDES:
        raise ValueError(f"a factor side is 'test' or 'train'; got {side!r}.")
    return ArrayLayout(f"{FACTORS_GROUP}/{side}", (side, "factor"))


@dataclass(frozen=True)
class TopKLayout:
    """Where a top-k array lives (:mod:`infl_array.storage.topk`).

    >>> tk = top_k(10, axis=1, largest=True)
    >>> tk.values.path, tk.indices.chunk_key((2, 0))
    ('topk/axis1-largest-k10/values', 'topk/axis1-largest-k10/indices/c/2/0')
    >>> tk.base(500).values.path
    'topk/axis1-largest-k10/upto500/values'
    >>> tk.bands(9000).indices.path, tk.bands(9000).indices.dimension_names
    ('topk/axis1-largest-k10/bands9000/indices', ('band_test', 'k'))
    """

    k: int
    axis: int
    largest: bool
    covered: int | None = None
    """For a base (:meth:`base`) or the bands (:meth:`bands`): the length of the reduced axis
    its rows were computed over."""
    banded: bool = False
    """Whether these are the per-band rows of a fill (:meth:`bands`)."""

    @property
    def path(self) -> str:
        """The group of the values and indices arrays."""
        order = "largest" if self.largest else "smallest"
        top = f"{TOPK_GROUP}/axis{self.axis}-{order}-k{self.k}"
        if self.covered is None:
            return top
        return f"{top}/{_BANDS if self.banded else _BASE}{int(self.covered)}"

    def base(self, covered: int) -> TopKLayout:
        """The rows this array held when its reduced axis had ``covered`` points (an append
        keeps them, so a row is brought up to date by scanning only the points after)."""
        return TopKLayout(self.k, self.axis, self.largest, int(covered))

    def bands(self, covered: int) -> TopKLayout:
        """The best ``k`` of every row within each band of the reduced axis (``covered``
        points long), one chunk per band, that a fill merges into the rows
        (:mod:`infl_array.engine.top_k_bands`); its first axis is bands x rows, so it never
        grows with the matrix."""
        return TopKLayout(self.k, self.axis, self.largest, int(covered), banded=True)

    def _array(self, name: str) -> ArrayLayout:
        rows = FACTOR_SIDES[0] if self.axis == 1 else FACTOR_SIDES[1]
        return ArrayLayout(f"{self.path}/{name}", (f"band_{rows}" if self.banded else rows, "k"))

    @property
    def values(self) -> ArrayLayout:
        """The top-k values, shape ``(n_rows, k)``."""
        return self._array("values")

    @property
    def indices(self) -> ArrayLayout:
        """The top-k indices, shape ``(n_rows, k)``."""
        return self._array("indices")


def top_k(k: int, axis: int, largest: bool) -> TopKLayout:
    """The layout of the top-k array of ``k`` values along ``axis``."""
    if axis not in (0, 1) or int(k) < 1:
        raise ValueError(f"a top-k array has axis 0 or 1 and k >= 1; got axis={axis}, k={k}.")
    return TopKLayout(int(k), axis, bool(largest))


SEGMENTS_PREFIX = f"{MATRIX.path}/{_SEGMENTS}/"
"""The key prefix of every segment record (:func:`segment_key`)."""


def segment_key(side: str, n: int) -> str:
    """The key recording appended segment ``n`` of the ``side`` axis.

    >>> segment_key("train", 2)
    'influence/segments/train/2.json'
    """
    return f"{segments_prefix(side)}{int(n)}.json"


def segments_prefix(side: str) -> str:
    """The key prefix of the segment records of the ``side`` axis (beside the matrix's chunks,
    claims and notes, so plain zarr readers never see them).

    >>> segments_prefix("test")
    'influence/segments/test/'
    """
    if side not in FACTOR_SIDES:
        raise ValueError(f"a segment's axis is 'test' or 'train'; got {side!r}.")
    return f"{SEGMENTS_PREFIX}{side}/"


def array_layout(path: str) -> ArrayLayout:
    """The layout of the stored array at ``path``.

    >>> array_layout("factors/test") == factors("test")
    True
    """
    known = {a.path: a for a in (MATRIX, SELF_INFLUENCE, *map(factors, FACTOR_SIDES))}
    if path in known:
        return known[path]
    found = top_k_part(path)
    if found is not None:
        tk, part = found
        return tk.values if part == "values" else tk.indices
    raise ValueError(
        f"{path!r} is not an array of an infl_array store; expected one of {sorted(known)} "
        "or a top-k array. See infl_array.storage.layout."
    )


def top_k_part(path: str) -> tuple[TopKLayout, str] | None:
    """The top-k array (or base) and the part (``"values"`` or ``"indices"``) at ``path``,
    or None when ``path`` is not a top-k array's part.

    >>> tk, part = top_k_part("topk/axis0-smallest-k3/upto40/indices")
    >>> (tk.k, tk.axis, tk.largest, tk.covered), part
    ((3, 0, False, 40), 'indices')
    """
    m = re.fullmatch(
        rf"{TOPK_GROUP}/axis([01])-(largest|smallest)-k(\d+)(?:/({_BASE}|{_BANDS})(\d+))?"
        r"/(values|indices)",
        path,
    )
    if m is None:
        return None
    tk = top_k(int(m[3]), int(m[1]), m[2] == "largest")
    if m[4] is not None:
        tk = tk.base(int(m[5])) if m[4] == _BASE else tk.bands(int(m[5]))
    return tk, m[6]


def unit_claim(unit_shape: Sequence[int], unit: Sequence[int]) -> str:
    """The claim name of unit ``(i, j)`` of blocks cut ``unit_shape`` (blocks per unit) at a time.

    The name says the cut too, so units of another cut never share a name (letters, digits and
    dots: see :meth:`~infl_array.storage.grid.BlockGrid.clean_partials`).

    >>> MATRIX.claims_prefix + unit_claim((4, 16), (1, 2))
    'influence/claims/u4x16.1.2'
    """
    rows, cols = (int(n) for n in unit_shape)
    return f"u{rows}x{cols}.{int(unit[0])}.{int(unit[1])}"


def factor_claim(side: str, b: int) -> str:
    """The claim name of factor block ``b`` of ``side`` (kept with the matrix's claims).

    >>> MATRIX.claims_prefix + factor_claim("train", 3)
    'influence/claims/factors.train.3'
    """
    return f"{factors(side).path.replace('/', '.')}.{int(b)}"


NOTES_PREFIX = f"{MATRIX.path}/{_NOTES}/"
"""The key prefix of the notes (beside the matrix's chunks and claims)."""


def note_key(key: str) -> str:
    """The key of the note ``key``.

    >>> note_key("not_converged")
    'influence/notes/not_converged.json'
    """
    return f"{NOTES_PREFIX}{key}.json"


def note_name(stored_key: str) -> str:
    """The note's key from its stored key (inverse of :func:`note_key`).

    >>> note_name("influence/notes/not_converged.json")
    'not_converged'
    """
    return stored_key.removeprefix(NOTES_PREFIX).removesuffix(".json")
