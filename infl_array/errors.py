"""Exception types of infl_array, and the helpers their messages share.

Every class subclasses a builtin, so ``except LookupError`` or ``except ValueError`` written
against numpy or zarr keeps working. Messages say what was expected, what arrived, and the fix;
:func:`add_note` attaches a note to an exception, :func:`format_bytes` writes a size in them.
"""

from __future__ import annotations

__all__ = [
    "BlockFunctionError",
    "CorruptBlockError",
    "MemoryBudgetError",
    "MissingBlockError",
    "NotAStoreError",
    "SampleError",
    "StaleCacheError",
    "add_note",
    "format_bytes",
]


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (shown under its traceback; Python >= 3.11)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, as messages write sizes.

    >>> format_bytes(512), format_bytes(1536), format_bytes(3 * 2**30), format_bytes(2**42)
    ('512 B', '1.5 KiB', '3.0 GiB', '4.0 TiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class MissingBlockError(LookupError):
    """A block that is not in the store was read, and nothing can compute it.

    Raised when a store opened without a model or block function is asked for a block that
    was never computed. ``block_coords`` is the ``(i, j)`` block index.
    """

    def __init__(self, block_coords: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.block_coords = block_coords


class MemoryBudgetError(MemoryError):
    """Something would take more memory than the ``memory_budget`` has left.

    Raised before allocating (:class:`~infl_array.engine.budget.Budget`). ``what`` names what
    asked, ``nbytes`` how much, ``budget`` the budget's bytes and ``held`` what held the rest
    (``{what: bytes}``); the message says the fix. A ``MemoryError``, so ``except MemoryError``
    keeps working.
    """

    def __init__(
        self,
        message: str,
        *,
        what: str = "",
        nbytes: int = 0,
        budget: int = 0,
        held: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.what = what
        self.nbytes = nbytes
        self.budget = budget
        self.held = dict(held or {})


class StaleCacheError(ValueError):
    """The store was made from a different model, data or settings than those given to open.

    ``differences`` names what differs (``"model"``, ``"test"``, ``"train"``, ``"backend"``,
    ``"block_shape"``, ``"dtype"``, ...).
    """

    def __init__(self, differences: list[str], message: str) -> None:
        super().__init__(message)
        self.differences = differences


class NotAStoreError(ValueError):
    """A path or store holds no infl_array store, or its metadata is damaged."""


class CorruptBlockError(ValueError):
    """A stored block's bytes fail their checksum or do not decode.

    ``block_coords`` is the ``(i, j)`` block index; ``arr.repair()`` recomputes it.
    """

    def __init__(self, block_coords: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.block_coords = block_coords


class BlockFunctionError(ValueError):
    """A block function returned something that cannot be stored (shape, dtype, NaN or inf)."""

    def __init__(self, block_coords: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.block_coords = block_coords


class SampleError(ValueError):
    """One sample of the test or train data cannot be used (a label out of range, a NaN input).

    ``data`` is ``"test"`` or ``"train"``, ``index`` the sample's index in that data set; the
    original error is the ``__cause__``.
    """

    def __init__(self, data: str, index: int, message: str) -> None:
        super().__init__(message)
        self.data = data
        self.index = index
