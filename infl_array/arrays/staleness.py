"""Stale stores: comparing what a store recorded at creation with what is given at open."""

from __future__ import annotations

import json
from typing import Any

from infl_array.errors import StaleCacheError
from infl_array.storage.store import InfluenceStore

__all__ = ["LEGACY_SETTINGS", "check_same", "describe_difference", "same_settings"]

LEGACY_SETTINGS = {"block_structure": "full", "second_order_mode": "hessian"}
"""Settings older stores of the per-layer backends recorded (unused by them, at these values)
and their configs no longer carry."""


def same_settings(stored: Any, given: Any) -> Any:
    """``given`` when the recorded backend settings ``stored`` are ``given``'s plus only
    :data:`LEGACY_SETTINGS` at their values (a store made before they were dropped), else
    ``stored``: what to compare ``given`` with.

    >>> same_settings('{"a":1,"block_structure":"full"}', '{"a":1}')
    '{"a":1}'
    >>> same_settings('{"a":1,"block_structure":"diagonal"}', '{"a":1}')
    '{"a":1,"block_structure":"diagonal"}'
    """
    old, new = _as_json_object(stored), _as_json_object(given)
    if old is None or new is None:
        return stored
    extra = {k: v for k, v in old.items() if k not in new}
    legacy = all(LEGACY_SETTINGS.get(k) == v for k, v in extra.items())
    rest = {k: v for k, v in old.items() if k in new}
    return given if extra and legacy and rest == new else stored


def check_same(
    opened: InfluenceStore,
    given: dict[str, tuple[Any, Any]],
    kind_given: str | None,
    kind_stored: str,
) -> None:
    """Raise :class:`StaleCacheError` naming every recorded value that differs from the given
    one (``given`` maps a name to ``(stored, given)``), and a different kind of source."""
    differ = [name for name, (stored, now) in given.items() if stored != now]
    details = [f"{name}: {describe_difference(*given[name])}" for name in differ]
    if kind_given is not None and kind_given != kind_stored:
        differ.insert(0, "computed_by")
        details.insert(
            0, f"computed_by: the store was computed by a {kind_stored}, given a {kind_given}"
        )
    if differ:
        raise StaleCacheError(
            differ,
            f"the store {opened.where} was created with a different "
            f"{', '.join(differ)} than given ({'; '.join(details)}). Its blocks would not "
            "match; open it with the original model, data and settings, or create a new store "
            "(or pass overwrite=True to create(...) to recompute).",
        )


def describe_difference(stored: Any, given: Any) -> str:
    """How a recorded value and a given one differ, readable even when both are long.

    JSON objects (a backend's settings) name the keys that differ; long strings (fingerprints)
    show where they part.

    Examples
    --------
    >>> describe_difference('{"rtol": 0.0001, "atol": 1e-06}', '{"rtol": 1e-05, "atol": 1e-06}')
    'store has rtol=0.0001, given rtol=1e-05'
    >>> describe_difference("ab" * 40, "ab" * 30 + "xx" + "ab" * 9)[:60]
    "store has '...abababababababab' (80 chars), given '...ababab"
    """
    old, new = _as_json_object(stored), _as_json_object(given)
    if old is not None and new is not None:
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        shown = keys[:6]
        more = f" (and {len(keys) - 6} more keys)" if len(keys) > 6 else ""

        def side(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={_short(d[k]) if k in d else '(absent)'}" for k in shown)

        return f"store has {side(old)}, given {side(new)}{more}"
    if isinstance(stored, str) and isinstance(given, str) and max(len(stored), len(given)) > 60:
        at = next(
            (i for i, (a, b) in enumerate(zip(stored, given, strict=False)) if a != b),
            min(len(stored), len(given)),
        )

        def window(text: str) -> str:
            lo = max(0, at - 12)
            return repr(("..." if lo else "") + text[lo : at + 4]) + f" ({len(text)} chars)"

        return (
            f"store has {window(stored)}, given {window(given)}: they differ from character "
            f"{at + 1}"
        )
    return f"store has {_short(stored)}, given {_short(given)}"


def _as_json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]
