"""Render RESULTS.md and the marked blocks of README.md from the result files; check they match.

``python benchmarks/render.py`` rewrites, from ``benchmarks/results/*.json`` alone (no
benchmark runs):

- every section of ``benchmarks/RESULTS.md`` that a record names (its ``section``), with the
  record's renderer;
- every block of ``README.md``, ``benchmarks/README.md`` and ``docs/**/*.md`` between the
  markers ``<!-- render NAME FUNCTION -->`` and ``<!-- /render -->``, where ``NAME`` is a
  record (``speed``) and ``FUNCTION`` a renderer (``speed/speed_report.py:readme``) that takes
  the record and returns markdown.

``--check`` writes nothing: it exits 1, listing what differs, when a rendered text differs from
the file, when a section of RESULTS.md has no record, or when a marker names a missing record.
CI runs it, so a figure typed by hand (or a result file edited without re-rendering) fails.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
import sys
from pathlib import Path

from results_md import HERE, RESULTS, RESULTS_DIR, load_record, render_record

ROOT = HERE.parent
MARKED = re.compile(
    r"(?P<open><!-- render (?P<name>[\w.-]+) (?P<fn>[\w./-]+\.py:\w+) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- /render -->)",
    re.S,
)
SECTION = re.compile(r"^## .*$", re.M)


def marked_files(root: Path = ROOT) -> list[Path]:
    """The markdown files under ``root`` whose marked blocks are rendered."""
    files = [root / "README.md", root / "benchmarks" / "README.md"]
    files += sorted((root / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def records(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, object]]:
    """Every result record in ``results_dir``, by name."""
    return {p.stem: load_record(p) for p in sorted(results_dir.glob("*.json"))}


def sections_of(text: str) -> dict[str, str]:
    """The ``## `` sections of a markdown text, by heading line (each up to the next one)."""
    starts = [m.start() for m in SECTION.finditer(text)] + [len(text)]
    return {
        text[a : text.index("\n", a) if "\n" in text[a:] else len(text)]: text[a:b].rstrip() + "\n"
        for a, b in itertools.pairwise(starts)
    }


def render_results(
    text: str,
    recs: dict[str, dict[str, object]],
    problems: list[str],
    results_dir: Path = RESULTS_DIR,
) -> str:
    """RESULTS.md's text with every section that a record names rendered anew, in file order."""
    head = text[: m.start()] if (m := SECTION.search(text)) else text
    old = sections_of(text)
    by_section = {str(r["section"]): r for r in recs.values()}
    for heading in old:
        if heading not in by_section:
            problems.append(f"RESULTS.md: section {heading!r} has no result file in {results_dir}")
    new = dict(old)
    for heading, rec in by_section.items():
        new[heading] = render_record(rec)
    parts = [head.rstrip() + "\n"] + [new[h] for h in new]
    return "\n".join(parts)


def render_marked(
    text: str, where: str, recs: dict[str, dict[str, object]], problems: list[str]
) -> str:
    """``text`` with each marked block rendered from its record."""

    def one(m: re.Match[str]) -> str:
        rec = recs.get(m["name"])
        if rec is None:
            problems.append(f"{where}: a marker names the result {m['name']!r}, which has no file")
            return m[0]
        return m["open"] + render_record(rec, m["fn"]) + m["close"]

    return MARKED.sub(one, text)


def render_all(
    check: bool,
    *,
    results: Path = RESULTS,
    results_dir: Path = RESULTS_DIR,
    root: Path = ROOT,
) -> list[str]:
    """Render (or with ``check``, only compare) RESULTS.md and the marked blocks under ``root``.

    Returns the problems found: sections without a record, markers naming a missing record and,
    with ``check``, every file that differs from what its records render (with a short diff).
    Without ``check`` the differing files are rewritten.
    """
    recs = records(results_dir)
    problems: list[str] = []
    targets = {results: render_results(results.read_text(), recs, problems, results_dir)}
    for f in marked_files(root):
        targets[f] = render_marked(f.read_text(), str(f.relative_to(root)), recs, problems)
    changed = [f for f, new in targets.items() if f.read_text() != new]
    for f in changed:
        if check:
            diff = difflib.unified_diff(
                f.read_text().splitlines(),
                targets[f].splitlines(),
                str(f),
                "rendered",
                lineterm="",
                n=1,
            )
            problems.append(f"{f.relative_to(root)} differs from what its result files render:")
            problems.extend("    " + line for line in list(diff)[:40])
        else:
            f.write_text(targets[f])
            print(f"rendered {f.relative_to(root)}")
    done = "checked" if check else f"rendered, {len(changed)} changed"
    print(f"{len(recs)} result files, {len(targets)} files {done}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything differs"
    )
    args = parser.parse_args(argv)
    problems = render_all(args.check)
    for p in problems:
        print(p, file=sys.stderr)
    if args.check and problems:
        print(
            "fix: rerun the benchmark that writes the result, or `python benchmarks/render.py`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
