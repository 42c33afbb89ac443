"""The benchmarks' one report writer: number formats, markdown tables, sections of RESULTS.md.

Every benchmark script builds its section of ``benchmarks/RESULTS.md`` from these pieces: a
head (:func:`section_head`: title, command, machine), tables (:func:`table`) and prose, then
:func:`publish` prints the section and replaces that section of the file (:func:`write_section`),
leaving the other sections as they are. The command-line options that decide where the section
goes (``--no-write``, ``--results FILE``) are added by :func:`add_output_args`.

Result files (issue 22): no figure in RESULTS.md or README.md is typed by hand. A script
measures, then calls :func:`save_result`, which writes a JSON *record* to
``benchmarks/results/<name>.json`` (the section, the renderer, the command, the commit, the
machine, the load, the date, the wall time and the measured ``data``) and renders the section
from that record alone, with the script's ``render(record) -> str`` named in the record
(``"speed/speed_report.py:render"``, a path under ``benchmarks/``). ``benchmarks/render.py``
re-renders every section (and every marked block of README.md) from the result files;
``--check`` (run in CI) fails when a rendered table differs from the file.

Standard library only: the pyDVL environment imports this module too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
RESULTS_DIR = HERE / "results"
"""Where the result records live: ``<name>.json``, one per section."""


# ---------------------------------------------------------------------- numbers
def fmt_t(seconds: float) -> str:
    """A duration with a unit that keeps 3-4 significant digits.

    >>> fmt_t(2.5), fmt_t(0.01234), fmt_t(5.6e-5), fmt_t(-3.39)
    ('2.50 s', '12.34 ms', '56.0 us', '-3.39 s')
    """
    if seconds < 0:
        return "-" + fmt_t(-seconds)
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


# ---------------------------------------------------------------------- result records
def git_commit() -> dict[str, object]:
    """The checkout's commit and whether tracked files differ from it (``dirty``)."""

    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def load_now() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def save_result(
    name: str,
    section: str,
    renderer: str,
    data: Mapping[str, object],
    args: argparse.Namespace,
    *,
    script: str,
    argv: Sequence[str],
    wall_s: float,
    machine: Mapping[str, str],
    load_start: Sequence[float] | None = None,
) -> dict[str, object]:
    """Write the record ``benchmarks/results/<name>.json`` and publish the section it renders.

    Parameters
    ----------
    name : str
        The result file's stem (``"speed"``).
    section : str
        The ``## `` line of the section in RESULTS.md.
    renderer : str
        ``"dir/script.py:function"`` under ``benchmarks/``: ``function(record) -> str`` gives
        the section's markdown from the record alone (use :func:`record_head` for its head).
    data : mapping
        What was measured, JSON-serialisable (raw timings, not formatted strings).
    args : argparse.Namespace
        From :func:`add_output_args`: ``--no-write`` prints only (no JSON, no RESULTS.md).
    script, argv : str, sequence of str
        The script's path under ``benchmarks/`` and its arguments (the command shown).
    wall_s : float
        The run's wall time.
    machine : mapping
        Host facts (``harness.machine_info``).
    load_start : sequence of float, optional
        The load averages when the run began (:func:`load_now`); the end's are taken here.
    """
    record: dict[str, object] = {
        "name": name,
        "section": section,
        "renderer": renderer,
        "command": command(script, shown_args(argv)),
        **git_commit(),
        "machine": dict(machine),
        "load": {"start": list(load_start or []), "end": load_now()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(wall_s, 3),
        "data": data,
    }
    record = json.loads(json.dumps(record))  # render exactly what the file will hold
    if not args.no_write:
        write_record(record)  # first: a renderer's error must not lose the measurements
    publish(section, render_record(record), args)
    return record


def measure_and_save(
    name: str,
    section: str,
    script: str,
    measure: Callable[[argparse.Namespace], Mapping[str, object]],
    args: argparse.Namespace,
    machine: Callable[[], Mapping[str, str]],
) -> dict[str, object]:
    """Run ``measure(args)``, timed and with the load before and after, and save its record
    with :func:`save_result` (the renderer is ``script``'s ``render`` function)."""
    load_start, started = load_now(), time.perf_counter()
    data = measure(args)
    return save_result(
        name,
        section,
        f"{script}:render",
        data,
        args,
        script=script,
        argv=sys.argv[1:],
        wall_s=time.perf_counter() - started,
        machine=machine(),
        load_start=load_start,
    )


def write_record(record: Mapping[str, object]) -> Path:
    """Write ``record`` to ``RESULTS_DIR/<name>.json`` and return the path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{record['name']}.json"
    # keys in the order measured, not sorted: the renderers show mappings (the machine) in
    # their order, and the section a run prints must be the one render.py makes of the file
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def load_record(name_or_path: str | Path) -> dict[str, object]:
    """A record by name (``"speed"``) or path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = RESULTS_DIR / f"{name_or_path}.json"
    record: dict[str, object] = json.loads(path.read_text())
    return record


def renderer_function(spec: str) -> Callable[[Mapping[str, Any]], str]:
    """The function ``"dir/script.py:function"`` (a path under ``benchmarks/``) names.

    The script's folder and ``benchmarks/`` go first on ``sys.path`` so that its sibling
    imports work as when it runs.
    """
    path_s, _, fn_name = spec.partition(":")
    path = (HERE / path_s).resolve()
    if not fn_name or path.suffix != ".py" or not path.is_file():
        raise ValueError(f"a renderer is 'dir/script.py:function' under {HERE}; got {spec!r}")
    for d in (str(HERE), str(path.parent)):
        if d not in sys.path:
            sys.path.insert(0, d)
    mod_name = "_render_" + re.sub(r"\W", "_", path_s)
    module = sys.modules.get(mod_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(mod_name, path)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        loader.loader.exec_module(module)
    fn: Callable[[Mapping[str, Any]], str] = getattr(module, fn_name)
    return fn


def render_record(record: Mapping[str, Any], renderer: str | None = None) -> str:
    """The markdown ``record``'s renderer (or ``renderer``) makes of it, without trailing space."""
    return renderer_function(renderer or str(record["renderer"]))(record).rstrip() + "\n"


def record_head(record: Mapping[str, Any], title: str | None = None) -> list[str]:
    """A section's first lines from its record: title, command, machine, date, load, wall time.

    A record converted from an earlier result format may lack ``wall_s`` (shown as not
    recorded) and carries a ``note`` saying where it came from; the note is shown too.
    """
    machine = ", ".join(f"{k} {v}" for k, v in record["machine"].items() if k != "load at start")
    load = record["load"]
    loads = " -> ".join(
        "/".join(f"{x:.1f}" for x in load[k]) for k in ("start", "end") if load.get(k)
    )
    dirty = " (with uncommitted changes)" if record.get("dirty") else ""
    wall = record.get("wall_s")
    wall_text = "not recorded" if wall is None else f"{float(wall) / 60:.1f} min"
    note = [f"Note: {record['note']}", ""] if record.get("note") else []
    return [
        title or str(record["section"]),
        "",
        f"Command: `{record['command']}`",
        "",
        f"Commit `{str(record['commit'])[:10]}`{dirty}; run {record['date']}, wall time "
        f"{wall_text}; load average (1/5/15 min) {loads}.",
        "",
        f"Machine: {machine}.",
        "",
        *note,
        f"Result file: `benchmarks/results/{record['name']}.json` (this section is rendered "
        "from it by `python benchmarks/render.py`).",
    ]
