"""Result records and their rendering (issue 22): ``benchmarks/results_md.py`` and ``render.py``.

A record is written by ``results_md.save_result`` and its section rendered from it; then
``render.render_all`` re-renders RESULTS.md and the marked blocks of README files from the
records alone and, with ``check=True``, reports a hand-typed change, a section without a record
and a marker naming a missing record. Everything runs in a temporary tree (its own RESULTS.md,
``results/`` and README.md); the renderer is the reads suite's real one, on made-up figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import render  # noqa: E402
import results_md  # noqa: E402

SECTION = "## Reads against plain zarr (issue 2)"
RENDERER = "reads/reads_report.py:render"
README_FN = "reads/reads_report.py:readme"
NAMES = ["t3", "t3 x 1e-3", "low-rank t3 factors"]


def codec(ratio: float) -> dict[str, float]:
    return {"ratio": ratio, "enc": 500.0, "dec": 900.0, "err": 0.0, "bound": 0.0}


def read_row(case: str, ours: float, target: float | None, cache: Any = None) -> dict[str, Any]:
    return {"case": case, "ia": ours, "zarr": 0.030, "ratio_min": 1.0, "ratio_cpu": 1.0,
            "target": target, "reps": 9, "spread": [0, 0, 0, 0], "cache": cache}  # fmt: skip


FIRST = {"fn": "cheap fn", "first": 0.04, "cached": 0.004, "decoded": 0.015, "fn_block": 0.002,
         "need": 0.09, "need_decoded": 0.3}  # fmt: skip


def reads_data() -> dict[str, Any]:
    """Figures in the shape ``bench_reads.py`` measures them (made up, not measured)."""
    codecs = [
        ("blosc lz4 5 bitshuffle + crc32c (default)", 1.05),
        ("blosc zstd 3 bitshuffle + crc32c", 1.10),
        ("no compression, crc32c only", 1.0),
    ]
    return {
        "quick": True,
        "shape": [4000, 40000],
        "block": [256, 4096],
        "plan_shape": [100_000, 1_000_000],
        "store": {"fill_s": 7.5, "stored": 5.6e8, "raw": 6.4e8},
        "reads": [
            read_row("row `arr[1234]`", 0.033, 1.5),
            read_row("element `arr[1234, 12345]`", 0.027, 1.5),
            read_row("cache on, repeated: row `arr[1234]`", 1e-4, None, [1, 4 << 20, 1 << 28]),
        ],
        "plans": [{"case": "`plan.plan_outer` for one element", "time": 2.5e-6}],
        "codecs": {
            "rows": [{"codec": n, **{d: codec(r) for d in NAMES}} for n, r in codecs],
            "names": NAMES,
        },
        "first": [FIRST],
    }


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A checkout in miniature: RESULTS.md with one section and its record, a README block."""
    bench = tmp_path / "benchmarks"
    results_dir = bench / "results"
    bench.mkdir()
    monkeypatch.setattr(results_md, "RESULTS_DIR", results_dir)
    results = bench / "RESULTS.md"
    results.write_text(f"# Benchmark results\n\n{SECTION}\n\nold text, 1.23x\n")
    args = argparse.Namespace(no_write=False, results=results)
    results_md.save_result(
        "reads",
        SECTION,
        RENDERER,
        reads_data(),
        args,
        script="reads/bench_reads.py",
        argv=["--quick", "--results", str(results)],
        wall_s=61.0,
        machine={"nproc": "2", "cpu": "test"},
        load_start=[1.0, 2.0, 3.0],
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Project\n\nBefore.\n<!-- render reads {README_FN} -->\ntyped 9.99x\n"
        "<!-- /render -->\nAfter.\n"
    )
    return {"root": tmp_path, "results": results, "results_dir": results_dir, "readme": readme}


def run(tree: dict[str, Path], check: bool) -> list[str]:
    return render.render_all(
        check, results=tree["results"], results_dir=tree["results_dir"], root=tree["root"]
    )


def test_save_result_writes_the_record_and_renders_its_section(tree: dict[str, Path]) -> None:
    record = json.loads((tree["results_dir"] / "reads.json").read_text())
    assert record["command"] == "python benchmarks/reads/bench_reads.py --quick"
    assert record["renderer"] == RENDERER and record["section"] == SECTION
    assert set(record) >= {"commit", "dirty", "machine", "load", "date", "wall_s", "data"}
    assert record["load"]["start"] == [1.0, 2.0, 3.0] and len(record["load"]["end"]) == 3
    text = tree["results"].read_text()
    assert "old text" not in text
    assert text == "# Benchmark results\n\n" + results_md.render_record(record)
    # the figures come from the data: 0.033 / 0.030 and 0.027 / 0.030
    assert "| 1.1 | <= 1.5x | yes |" in text and "| 0.9 | <= 1.5x | yes |" in text
    assert "Result file: `benchmarks/results/reads.json`" in text


def test_readme_block_is_rendered_then_checked(tree: dict[str, Path]) -> None:
    problems = run(tree, check=True)
    assert problems[0] == "README.md differs from what its result files render:"
    assert "typed 9.99x" in tree["readme"].read_text()  # --check writes nothing
    assert run(tree, check=False) == []
    block = tree["readme"].read_text()
    assert "typed 9.99x" not in block and "0.90-1.10x zarr's time" in block
    assert block.startswith("# Project\n\nBefore.\n") and block.endswith("/render -->\nAfter.\n")
    assert run(tree, check=True) == []


def test_check_finds_a_hand_typed_change(tree: dict[str, Path]) -> None:
    run(tree, check=False)
    for key, old, new in (("results", "| 1.1 | <= 1.5x |", "| 1.0 | <= 1.5x |"),
                          ("readme", "0.90-1.10x", "0.90-1.05x")):  # fmt: skip
        path = tree[key]
        good = path.read_text()
        path.write_text(good.replace(old, new, 1))
        problems = run(tree, check=True)
        assert problems[0].startswith(str(path.relative_to(tree["root"])) + " differs")
        diff = [p.strip() for p in problems[1:]]
        assert any(d.startswith("-") and new in d for d in diff)  # the typed line
        assert any(d.startswith("+") and old in d for d in diff)  # what the record renders
        assert path.read_text() != good  # check left it as it was
        run(tree, check=False)
        assert path.read_text() == good


def test_check_finds_a_section_without_a_record(tree: dict[str, Path]) -> None:
    run(tree, check=False)
    with tree["results"].open("a") as f:
        f.write("\n## Typed by hand\n\n42 s\n")
    problems = run(tree, check=True)
    assert problems == [
        f"RESULTS.md: section '## Typed by hand' has no result file in {tree['results_dir']}"
    ]


def test_check_finds_a_marker_naming_a_missing_record(tree: dict[str, Path]) -> None:
    run(tree, check=False)
    docs = tree["root"] / "docs"
    docs.mkdir()
    (docs / "page.md").write_text(f"<!-- render speed {README_FN} -->\n7x\n<!-- /render -->\n")
    problems = run(tree, check=True)
    assert problems == [
        "docs/page.md: a marker names the result 'speed', which has no file",
    ]


RECORDS = sorted((BENCH / "results").glob("*.json"))


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_every_committed_record_renders_its_section(path: Path) -> None:
    record = results_md.load_record(path)
    assert record["name"] == path.stem
    text = results_md.render_record(record)
    assert text.startswith(str(record["section"]) + "\n")
    assert f"`benchmarks/results/{path.stem}.json`" in text


def test_measure_and_save_times_the_measurement_and_names_the_renderer(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_reads.py", "--quick"])
    seen: list[argparse.Namespace] = []

    def measure(args: argparse.Namespace) -> dict[str, Any]:
        seen.append(args)
        return reads_data()

    args = argparse.Namespace(no_write=False, results=tree["results"])
    record = results_md.measure_and_save(
        "reads", SECTION, "reads/reads_report.py", measure, args, lambda: {"nproc": "2"}
    )
    assert seen == [args]
    assert record["renderer"] == RENDERER and record["machine"] == {"nproc": "2"}
    assert record["command"] == "python benchmarks/reads/reads_report.py --quick"
    assert len(record["load"]["start"]) == 3 and record["wall_s"] >= 0
    assert json.loads((tree["results_dir"] / "reads.json").read_text()) == record
