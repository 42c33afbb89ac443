"""The attribution-quality section renders from its record alone, with no figure of its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(Path(__file__).parent), str(BENCH), str(BENCH / "quality")]

import quality_report  # noqa: E402
from records import sample_record as record  # noqa: E402
from results_md import render_record  # noqa: E402


def _row(lds: float) -> dict[str, float]:
    return {
        "lds": lds,
        "lds_spread": 0.004,
        "loo_pearson": 0.9,
        "loo_spearman": 0.8,
        "auc": 0.99,
        "seconds": 2.5,
        "self_seconds": 0.5,
        "corr_direct": 0.75,
    }


def sample_record(lds_ours: float = 0.6123, lds_peer: float = 0.5987) -> dict[str, Any]:
    """A record as ``quality.py`` writes it: one case, ours and one peer, no sweep."""
    case = {"name": "logreg", "kind": "logreg", "n_train": 600, "n_test": 100}
    case["weight_decay"] = 0.001
    model = {"train_accuracy": 0.99, "test_accuracy": 0.95, "hessian_eig_min_max": [-1e-6, 0.4]}
    result = {
        "case": "logreg",
        "sweep": None,
        "meta": {"case": case, "n_params": 650, "clean": model, "noisy": model},
        "settings": {
            "regularization": 0.001,
            "dtype": "float64",
            "rank": 50,
            "lissa_maxiter": 100,
            "projection_dim": 512,
            "trak_proj_dim": 512,
        },
        "n_subsets": 30,
        "n_loo": 40,
        "n_detect": 200,
        "n_flipped": 60,
        "prepare_seconds": 12.0,
        "rows": {"ours Direct": _row(lds_ours), "pyDVL Direct": _row(lds_peer)},
    }
    data = {"results": [result], "threads": 1, "grid_factors": [0.01, 0.1, 1.0, 10.0, 100.0]}
    return record("quality", quality_report.SECTION, "quality/quality_report.py:render", data)


def test_renders_the_measured_values_and_targets_from_the_record() -> None:
    text = render_record(sample_record())
    assert text.startswith(quality_report.SECTION)
    assert "| ours Direct | 0.612 +- 0.004 |" in text
    assert "| pyDVL Direct | 0.599 +- 0.004 |" in text
    assert "ours Direct LDS 0.612 vs pyDVL Direct 0.599: difference +0.014, within 0.02" in text
    assert "0.01x, 0.1x, 1x, 10x, 100x" in text
    assert "(with uncommitted changes)" in text


def test_every_figure_comes_from_the_record() -> None:
    """Other measured values give other text: the section holds no number of its own."""
    a = render_record(sample_record(0.6123, 0.5987))
    b = render_record(sample_record(0.4321, 0.4111))
    assert a != b
    assert "0.612" not in b and "0.432" in b
    # no LDS-like figure (0.xyz) appears in the notes that the record does not hold
    notes = b[b.index("### Settings and conventions") :]
    assert re.findall(r"\b0\.\d{3}\b", notes) == []


def test_readme_table_lists_each_method_per_case() -> None:
    text = quality_report.readme(sample_record())
    assert "| method | LDS, logreg (650 params) |" in text
    assert "| ours Direct | 0.612 |" in text and "| pyDVL Direct | 0.599 |" in text
    assert "logreg: 30 subsets" in text
