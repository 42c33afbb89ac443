"""The benchmarks' one report writer: number formats, markdown tables, sections of RESULTS.md.

Every benchmark script builds its section of ``benchmarks/RESULTS.md`` from these pieces: a
head (:func:`section_head`: title, command, machine), tables (:func:`table`) and prose, then
:func:`publish` prints the section and replaces that section of the file (:func:`write_section`),
leaving the other sections as they are. The command-line options that decide where the section
goes (``--no-write``, ``--results FILE``) are added by :func:`add_output_args`.

Standard library only: the pyDVL environment imports this module too.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ---------------------------------------------------------------------- numbers
def fmt_t(seconds: float) -> str:
    """A duration with a unit that keeps 3-4 significant digits.

    >>> fmt_t(2.5), fmt_t(0.01234), fmt_t(5.6e-5)
    ('2.50 s', '12.34 ms', '56.0 us')
    """
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_mb(nbytes: float) -> str:
    """Bytes in whole MiB.

    >>> fmt_mb(3 * 2**20)
    '3 MiB'
    """
    return f"{nbytes / 2**20:.0f} MiB"


def yes_no(met: bool | None) -> str:
    """The "met" cell of a target: ``yes``, a bold ``no``, or empty where no target applies."""
    if met is None:
        return ""
    return "yes" if met else "**no**"


# ---------------------------------------------------------------------- markdown
def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table as lines.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : iterable of sequences
        One sequence of cells per row (``str()`` of each), as many as ``header``.
    align : str
        One letter per column, ``l`` (left) or ``r`` (right); missing letters mean ``l``.

    >>> print("\\n".join(table(["case", "time"], [["a", "1 s"]], align="lr")))
    | case | time |
    |---|---:|
    | a | 1 s |
    """
    if set(align) - {"l", "r"} or len(align) > len(header):
        raise ValueError(f"align must be at most {len(header)} letters l or r; got {align!r}")
    sep = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells, the header {len(header)}: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def command(script: str, args: Sequence[str]) -> str:
    """The command line that reproduces a run, as the section shows it."""
    return " ".join(["python", f"benchmarks/{script}", *args])


def shown_args(argv: Sequence[str]) -> list[str]:
    """``argv`` without the options that only choose where the section goes.

    >>> shown_args(["--quick", "--no-write", "--results", "x.md", "--results=y.md"])
    ['--quick']
    """
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--results":
            skip = True
        elif a != "--no-write" and not a.startswith("--results="):
            out.append(a)
    return out


def section_head(
    title: str, command_line: str, info: Mapping[str, str], wall_s: float
) -> list[str]:
    """The first lines of a section: its title, the command, the machine, date and wall time."""
    machine = ", ".join(f"{k} {v}" for k, v in info.items())
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    return [
        title,
        "",
        f"Command: `{command_line}`",
        "",
        f"Machine: {machine}; run {when}, wall time {wall_s / 60:.1f} min.",
    ]


# ---------------------------------------------------------------------- RESULTS.md
def write_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section headed ``section`` (a ``## `` line) by ``text``, or append it."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new.rstrip("\n") + "\n")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--no-write`` (print only) and ``--results FILE`` (another RESULTS.md)."""
    parser.add_argument("--no-write", action="store_true", help="only print the section")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the results file to update (RESULTS.md)"
    )


def publish(section: str, text: str, args: argparse.Namespace) -> None:
    """Print the section; unless ``--no-write``, replace it in ``--results``."""
    print(text, flush=True)
    if not args.no_write:
        write_section(section, text, args.results)
        print(f"wrote section {section[3:]!r} of {args.results}", flush=True)
