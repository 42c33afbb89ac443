"""The large-model section renders from its record alone: medians, ranges, estimates labelled."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(Path(__file__).parent), str(BENCH), str(BENCH / "large")]

import large_report  # noqa: E402
from records import sample_record as record  # noqa: E402
from results_md import render_record  # noqa: E402


def _run(times: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"times": times, "peak_rss_mib": 1024.0, **extra}


def sample_record() -> dict[str, Any]:
    """A record as ``bench_large.py`` writes it: three runs at 1e5 (the matrix of EK-FAC read
    in block rows at 1e7, Kronfluence on 100 of 1,000 query rows), one failed run."""
    ekfac_rows = {"rows": 20, "block_shape": [20, 4096], "widths": {}, "stats": {}}
    runs_1e5 = {
        "floor": [_run({"passes": p, "product": 1.0}) for p in (1.0, 2.0, 3.0)],
        "projected": [
            _run({"fit": 3.0, "fill": f, "with_test": 0.1, "memory": 1.0}) for f in (1.0, 2.0, 4.0)
        ],
        "kronfluence": [
            _run({"fit": 10.0, "scores_100": 5.0}, rows=[100], query_batch=100, batch=128),
            {"error": "timed out after 3600 s"},
        ],
    }
    data = {
        "settings": {
            "n_train": 10000,
            "n_test": 1000,
            "dim": 4096,
            "reg": 0.001,
            "threads": 2,
            "torch": "2.13.0",
            "once": ["trak"],
            "ekfac_rows": {"1e5": 1000, "1e7": 20},
            "cg_maxiter": 10,
            "pydvl_rows": 2,
            "kronfluence_query_batch": 1000,
        },
        "models": {
            s: {"params": p, "test_acc": 1.0, "epochs": 3, "train_s": 1.0}
            for s, p in (("1e5", 105506), ("1e7", 9984650))
        },
        "sizes": {
            "1e5": {"runs": runs_1e5, "spearman": {}, "repeats": 3},
            "1e7": {
                "runs": {
                    "ekfac": [
                        _run(
                            {
                                "fit": 100.0,
                                "create": 0.0,
                                "first_block_row": 60.0,
                                "second_block_row": 20.0,
                            },
                            **ekfac_rows,
                        )
                    ]
                },
                "spearman": {},
                "repeats": 1,
            },
        },
    }
    return record("large", large_report.SECTION, "large/large_report.py:render", data)


def test_renders_medians_ranges_and_ratios_from_the_record() -> None:
    text = render_record(sample_record())
    assert text.startswith(large_report.SECTION)
    # floor: passes + product per run = 2, 3, 4 -> median 3.0 [2.0-4.0]
    assert "| floor | 3/3 | n/a | 3.0 [2.0-4.0] |" in text
    # fill / floor paired per run: 1/2, 2/3, 4/4 -> median of medians 2/3
    assert "fill / floor: 0.67 (paired runs 0.50-1.00)" in text
    assert "Result file: `benchmarks/results/large.json`" in text


def test_estimates_are_labelled_with_their_basis_and_failures_counted() -> None:
    text = render_record(sample_record())
    # 1e7 EK-FAC: 60 + 49 x 20 = 1,040 s, an estimate, never a bound
    assert "1,040 (est.)" in text
    assert "first block row (20 rows, train side computed) + 49 x the second" in text
    # Kronfluence: 100 rows in 5 s, scaled to 1,000 rows: 50 s; one of two runs failed
    assert "| kronfluence | 1/2 | 10.0 | 50.0 (est.) | 60.0 (est.) |" in text
    assert "100 query rows scaled linearly to 1000" in text
    assert "lower bound" not in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, None, 3.0], {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}), ([None], None)],
)
def test_spread_ignores_missing_values(values: list[float | None], expected: object) -> None:
    assert large_report.spread(values) == expected


def test_readme_table_gives_each_size_its_medians() -> None:
    text = large_report.readme(sample_record())
    assert (
        "| parameters | floor | ProjectedInfluence | EkfacInfluence | Kronfluence EK-FAC |" in text
    )
    assert "| 105,506 | 3.0 [2.0-4.0] | 5.0 [4.0-7.0] |  | 60.0 (est.) |" in text
    assert "| 9,984,650 |  |  | 1,140 (est.) |  |" in text


def test_a_shared_machine_is_said_and_failures_keep_the_table_intact() -> None:
    rec = sample_record()
    rec["data"]["sizes"]["1e7"]["runs"]["trak"] = [{"error": "a | b"}]
    text = render_record(rec)
    assert "the load average reached 4 on its 2 cores" in text
    row = next(line for line in text.splitlines() if line.startswith("| trak"))
    assert row.count("|") == 9 and "failed: a / b" in row


def test_pydvl_matrix_is_extrapolated_from_its_rows_and_labelled() -> None:
    rec = sample_record()
    rec["data"]["settings"].update(pydvl_budget_s=300.0, pydvl_timeout_s=1200.0)
    pydvl = _run(
        {"fit": 1.0, "solve": 30.0, "products": 5.0},
        solve_rows=[10.0, 20.0],
        rows=2,
        rows_wanted=200,
        maxiter=10,
        budget_s=300.0,
        ekfac="NotImplementedLayerRepresentationException: Conv2d",
    )
    rec["data"]["sizes"]["1e5"]["runs"]["pydvl"] = [pydvl]
    text = render_record(rec)
    row = next(line for line in text.splitlines() if line.startswith("| pydvl"))
    # mean 15 s per row x 1,000 test rows + one 5 s products pass = 15,005 s; fit 1 s
    assert "| pydvl | 1/1 | 1.0 | 15,005 (est.) | 15,006 (est.) |" in row
    assert "CG solves of 2 test row(s), mean 15.0 s each, x 1000 rows" in row
    assert "not converged" in row and "rows one at a time until 300 s had passed" in row
    assert "none starts after 300 s (hard timeout 1,200 s)" in text


def test_ekfac_block_shape_says_how_it_was_chosen_and_not_run_sizes_say_why() -> None:
    rec = sample_record()
    ekfac = _run(
        {"fit": 2.0, "create": 0.5, "fill": 4.0},
        rows=1000,
        block_shape=[64, 90],
        block_chosen_by="create",
        memory_budget=4 << 30,
        widths={},
        stats={},
    )
    rec["data"]["sizes"]["1e5"]["runs"]["ekfac"] = [ekfac]
    rec["data"]["settings"]["not_run"] = {"1e6": "does not fit the time this run had"}
    text = render_record(rec)
    row = next(line for line in text.splitlines() if line.startswith("| ekfac"))
    assert "| ekfac | 1/1 | 2.0 | 4.5 | 6.5 |" in row
    assert "block shape (64, 90) (chosen by `create` with no `block_shape` named" in row
    assert "`memory_budget` (4 GiB)" in row
    assert "Not run: 1e6: does not fit the time this run had" in text


def test_sizes_render_smallest_first_and_a_cut_off_size_says_what_did_not_run() -> None:
    rec = sample_record()
    sizes = rec["data"]["sizes"]
    sizes["1e7"].update(complete=False, not_yet_run=["kronfluence", "trak"])
    rec["data"]["sizes"] = {"1e7": sizes["1e7"], "1e5": sizes["1e5"]}  # 1e7 ran first
    text = render_record(rec)
    assert text.index("### 105,506 parameters") < text.index("### 9,984,650 parameters")
    assert "not run: kronfluence, trak." in text
    table = large_report.readme(rec)
    assert table.index("| 105,506 |") < table.index("| 9,984,650 |")
