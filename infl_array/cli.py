"""The ``infl-array`` command: ``demo``, ``info``, ``top`` and ``verify``.

An expected error (a store that is not there or not readable, bad input, a damaged or stale
store: ``LookupError``, ``ValueError``, ``OSError``, ``TypeError``) is printed as one paragraph,
``error: <what, where, the fix>``, with exit status 2; ``--traceback`` (or the environment
variable ``INFL_ARRAY_TRACEBACK=1``) lets it propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from infl_array.arrays.influence import InfluenceArray, open_array
from infl_array.version import __version__

__all__ = [
    "TRACEBACK_ENV",
    "build_parser",
    "cmd_demo",
    "cmd_info",
    "cmd_top",
    "cmd_verify",
    "main",
]

TRACEBACK_ENV = "INFL_ARRAY_TRACEBACK"
"""Environment variable: set to 1 to show the traceback of expected errors, as --traceback."""


def _open(store: str) -> InfluenceArray:
    return open_array(store)


def cmd_demo(args: argparse.Namespace) -> int:
    from infl_array.demo import run

    run(args.store)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    arr = _open(args.store)
    print(repr(arr))
    segments = [s.to_json() for s in arr.segments]
    print(
        json.dumps(
            {**arr.meta.to_json(), "notes": arr.notes, "segments": segments},
            indent=2,
            sort_keys=True,
        )
    )
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    if args.k < 1:
        print(f"error: --k must be at least 1; got {args.k}. Pass e.g. --k 10.", file=sys.stderr)
        return 2
    arr = _open(args.store)
    largest = not args.harmful
    word = "harmful" if args.harmful else "helpful"
    if args.test is None:
        values, indices = arr.top_k(args.k, axis=1, largest=largest)
        rows = range(arr.shape[0])
    else:
        if not -arr.shape[0] <= args.test < arr.shape[0]:
            print(
                f"error: --test {args.test} is out of range; the store has {arr.shape[0]} "
                f"test points (0..{arr.shape[0] - 1}).",
                file=sys.stderr,
            )
            return 2
        i = args.test % arr.shape[0]
        row = np.asarray(arr[i])
        cols = np.arange(row.size)
        order = np.lexsort((cols, -row if largest else row))[: args.k]
        values, indices = row[order][None, :], order[None, :]
        rows = range(i, i + 1)
    for n, i in enumerate(rows):
        pairs = ", ".join(f"{j}: {v:+.4g}" for j, v in zip(indices[n], values[n], strict=True))
        print(f"test {i}: most {word} train points {pairs}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    arr = _open(args.store)
    report = arr.store_report(progress=not args.quiet)
    print("\n".join(report.lines()))
    if not report.ok:
        print(
            "repair them with arr.repair() on the store opened with its model or function: it "
            "recomputes damaged blocks and deletes damaged factor chunks and claims."
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infl-array", description="Lazy, cached influence-function matrices."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--traceback",
        action="store_true",
        help=f"show the full traceback of errors (also: {TRACEBACK_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job end to end on a small real data set")
    p.add_argument("store", nargs="?", default="infl-array-demo", help="store directory")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("info", help="describe a store")
    p.add_argument("store")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("top", help="most helpful (or harmful) train points per test point")
    p.add_argument("store")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--test", type=int, default=None, help="one test point (default: all)")
    p.add_argument("--harmful", action="store_true", help="most harmful instead of helpful")
    p.set_defaults(func=cmd_top)
    p = sub.add_parser("verify", help="check every stored block of every array in the store")
    p.add_argument("store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (``infl-array top S | head``): what it wanted was printed
        _silence_stdout()
        return 0
    except (LookupError, ValueError, OSError, TypeError) as exc:
        if args.traceback or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
