"""Integrity of a whole store: which stored blocks, claims and notes are damaged.

:func:`check_store` reads every stored chunk of every array in the store (the matrix, the
self-influence, the test and train factors: whatever :mod:`infl_array.storage.layout` names and
the store holds) and every claim and note object, and returns a :class:`StoreReport`. A chunk
is damaged when its bytes fail their CRC32C checksum or do not decode (truncated, flipped
bits, a foreign file under a chunk's key) or when it holds non-finite values; a claim or note
is damaged when it is not the small JSON object it should be; a derived array or group (the
self-influence, factors, top-k arrays and their groups) is damaged when its zarr metadata does
not decode, or is missing while its chunks remain (:mod:`infl_array.storage.nodes`). A deleted
chunk is not damage: it is a block not computed (yet), which :attr:`ArrayCheck.stored` counts
and the next read or fill computes.

What to do about damage is the caller's (``InfluenceArray.repair``): recompute a damaged
matrix or self-influence block, delete a damaged factor chunk (recomputed on next need) or a
damaged claim (the unit can be claimed anew), delete a derived node whose metadata is damaged
(created again on next need), and mark a damaged note as such (its message is lost; a note is
never removed). :func:`delete_damaged` and :func:`mark_damaged_notes` do that.

This module knows zarr (through :mod:`infl_array.storage.grid` and
:mod:`infl_array.storage.zarr_compat`) and numpy, not torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from infl_array.storage import layout, nodes
from infl_array.storage.claims import is_claim
from infl_array.storage.grid import BlockCoords, BlockGrid
from infl_array.storage.notes import write_notes
from infl_array.storage.store import InfluenceStore
from infl_array.storage.zarr_compat import delete_key, list_prefix, read_key

__all__ = [
    "CLAIMS",
    "NOTES",
    "ArrayCheck",
    "Damage",
    "StoreReport",
    "check_store",
    "delete_damaged",
    "mark_damaged_notes",
    "stored_grids",
]

CLAIMS = "claims"
""":attr:`Damage.array` of a damaged claim object."""

NOTES = "notes"
""":attr:`Damage.array` of a damaged note object."""

Each = Callable[[str, list[BlockCoords]], Iterable[BlockCoords]]
"""``each(array_path, blocks)``: how the blocks of one array are iterated (a progress bar)."""


@dataclass(frozen=True)
class Damage:
    """One damaged object of the store.

    Attributes
    ----------
    array : str
        The stored array it belongs to (``"influence"``, ``"self_influence"``,
        ``"factors/test"``, ``"factors/train"``), or ``"claims"`` / ``"notes"``; for
        damaged metadata (``what == "metadata"``), the derived node's path.
    what : str
        The object named for messages: ``"block (1, 2)"``, ``"train block 3"``,
        ``"claim influence/claims/1.2"``, ``"note not_converged"``.
    key : str
        Its key in the store.
    problem : str
        What is wrong with it.
    coords : tuple of int or None
        The block's coordinates in its array's grid (``(i, j)``; ``(0, j)`` for the
        self-influence; ``(b, 0)`` for factors); None for claims and notes.
    """

    array: str
    what: str
    key: str
    problem: str
    coords: BlockCoords | None = None

    @property
    def is_metadata(self) -> bool:
        """Whether this is the damaged metadata of a derived node (``array`` is its path)."""
        return self.key.endswith(nodes.METADATA)

    def __str__(self) -> str:
        return f"{self.array}: {self.what} ({self.key}) {self.problem}"


@dataclass(frozen=True)
class ArrayCheck:
    """What :func:`check_store` found in one stored array."""

    array: str
    blocks: int
    """Blocks of the array's grid."""
    stored: int
    """Blocks whose chunk exists."""
    damaged: tuple[Damage, ...]

    def line(self) -> str:
        """One line for people: how many stored blocks pass, and which are damaged."""
        if not self.damaged:
            return f"{self.array}: all {self.stored} stored blocks pass their checksums"
        which = ", ".join(d.what for d in self.damaged)
        return (
            f"{self.array}: {len(self.damaged)} of {self.stored} stored blocks are damaged: {which}"
        )


@dataclass(frozen=True)
class StoreReport:
    """What :func:`check_store` found in the whole store.

    Examples
    --------
    >>> bad = Damage("factors/train", "train block 2", "factors/train/c/2/0",
    ...              "fails its checksum or does not decode", (2, 0))
    >>> report = StoreReport((ArrayCheck("factors/train", 3, 3, (bad,)),), ())
    >>> report.ok, report.blocks("factors/train"), report.blocks("influence")
    (False, [(2, 0)], [])
    """

    arrays: tuple[ArrayCheck, ...]
    objects: tuple[Damage, ...]
    """Damaged metadata of derived nodes, claims and notes."""

    @property
    def damaged(self) -> tuple[Damage, ...]:
        """Everything damaged, arrays first (in layout order), then claims and notes."""
        return tuple(d for a in self.arrays for d in a.damaged) + self.objects

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged."""
        return not self.damaged

    def blocks(self, array: str) -> list[BlockCoords]:
        """The damaged blocks of ``array`` (grid coordinates), sorted."""
        return sorted(d.coords for d in self.damaged if d.array == array and d.coords)

    def lines(self) -> list[str]:
        """One line per array, then one per damaged claim or note."""
        return [a.line() for a in self.arrays] + [str(d) for d in self.objects]


def stored_grids(store: InfluenceStore) -> Iterator[BlockGrid]:
    """Every array of the store that exists and the layout names (the matrix, the
    self-influence, the factors, then any other, such as top-k arrays), in that order.

    Arrays are found by listing the group, so an array a later version adds to the layout is
    checked as soon as it is stored; arrays the layout does not name are not infl_array's.
    """
    first = [layout.MATRIX, layout.SELF_INFLUENCE, *map(layout.factors, layout.FACTOR_SIDES)]
    rank = {a.path: n for n, a in enumerate(first)}
    paths = [p for p in store.array_paths() if nodes.is_named(p)]
    for path in sorted(paths, key=lambda p: (rank.get(p, len(rank)), p)):
        grid = store.grid(path)
        if grid is not None:
            yield grid


def check_store(store: InfluenceStore, each: Each | None = None) -> StoreReport:
    """Read every stored block, claim and note of ``store``; report what is damaged."""
    checks = []
    claims: list[Damage] = []
    for grid in stored_grids(store):
        present = sorted(grid.list_computed())
        visit = present if each is None else each(grid.name, present)
        damaged = []
        for coords in visit:
            problem = grid.block_problem(coords)
            if problem is not None:
                chunk = grid.chunk_index(coords)
                what = grid.layout.block_name(chunk)
                key = grid.layout.chunk_key(chunk)
                damaged.append(Damage(grid.name, what, key, problem, coords))
        n_blocks = grid.grid_shape[0] * grid.grid_shape[1]
        checks.append(ArrayCheck(grid.name, n_blocks, len(present), tuple(damaged)))
        claims += _damaged_claims(grid)
    metadata = [
        Damage(node, "metadata", key, problem)
        for node, key, problem in nodes.damaged_nodes(store.matrix.zarr_store)
    ]
    return StoreReport(tuple(checks), tuple(metadata + claims + _damaged_notes(store)))


def _damaged_claims(grid: BlockGrid) -> list[Damage]:
    found = []
    prefix = grid.layout.claims_prefix
    for key in sorted(list_prefix(grid.zarr_store, prefix)):
        name = key[len(prefix) :]
        if layout.PARTIAL_CLAIM.match(name):
            continue  # a claim being written (or abandoned mid-write): never read as a claim
        if not is_claim(_json(read_key(grid.zarr_store, key))):
            problem = (
                'is not a claim object {"owner", "expires"}; it holds its unit for one claim '
                "lifetime after each filler first sees it"
            )
            found.append(Damage(CLAIMS, f"claim {key}", key, problem))
    return found


def _damaged_notes(store: InfluenceStore) -> list[Damage]:
    found = []
    zarr_store = store.matrix.zarr_store
    for key in sorted(list_prefix(zarr_store, layout.NOTES_PREFIX)):
        if not key.endswith(".json"):
            continue
        record = _json(read_key(zarr_store, key))
        if record is None or "message" not in record:
            problem = 'is not a note object {"key", "message"}; its message is lost'
            found.append(Damage(NOTES, f"note {layout.note_name(key)}", key, problem))
    return found


def _json(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object in ``raw``, or None when it is not one."""
    try:
        found = json.loads(raw or b"")
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def delete_damaged(store: InfluenceStore, damage: Iterable[Damage]) -> int:
    """Delete the stored objects of ``damage`` (keys named by the layout); returns how many.

    A deleted block counts as not computed; a deleted claim frees its unit; damaged metadata
    deletes its whole node (:func:`infl_array.storage.nodes.delete_node`).
    ``PermissionError`` on a read-only store.
    """
    damage = list(damage)
    if damage:
        store.matrix.check_writable()
    zarr_store = store.matrix.zarr_store
    count = 0
    for d in damage:
        if d.is_metadata:
            nodes.delete_node(zarr_store, d.array)
        else:
            delete_key(zarr_store, d.key)
        count += 1
    return count


def mark_damaged_notes(store: InfluenceStore, damage: Iterable[Damage]) -> int:
    """Rewrite each damaged note of ``damage`` as a note saying that it was damaged.

    Its message cannot be recovered, but a note is never removed: what it said held for values
    still in the store, so the rewritten note keeps the warning that something was noted.
    Returns how many notes were rewritten.
    """
    notes = {layout.note_name(d.key): _LOST_NOTE for d in damage if d.array == NOTES}
    if notes:
        store.matrix.check_writable()
        write_notes(store.matrix.zarr_store, notes)
    return len(notes)


_LOST_NOTE = (
    "this note was found damaged by repair() and its message is lost; it said something about "
    "how values in this store were computed. Recompute the store (overwrite=True) to be sure."
)
