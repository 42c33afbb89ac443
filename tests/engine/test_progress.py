"""Progress from the first second of any read that computes (issue 21): the bar of a read whose
cost sits in one block is drawn before that block ends, with what the process is doing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import infl_array as ia
from infl_array.engine.progress import activity, current_activity


def slow_block(rows: range, cols: range) -> np.ndarray:
    with activity("fitting SlowBackend"):
        time.sleep(2.0)
    return np.zeros((len(rows), len(cols)))


def test_a_read_of_one_slow_block_shows_its_bar_before_the_block_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arr = ia.InfluenceArray.from_function(tmp_path / "s", slow_block, shape=(2, 3))
    arr[:]
    err = capsys.readouterr().err
    assert "compute:   0%" in err and "0/1" in err  # drawn while the block was computing
    assert "fitting SlowBackend" in err
    assert "1/1" in err


def test_a_quick_read_shows_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", lambda r, c: np.ones((len(r), len(c))), shape=(2, 3)
    )
    arr[:]
    assert capsys.readouterr().err == ""


def test_activities_nest() -> None:
    assert current_activity() == ""
    with activity("outer"):
        with activity("inner"):
            assert current_activity() == "inner"
        assert current_activity() == "outer"
    assert current_activity() == ""


def test_a_lazy_fit_names_itself_while_it_runs() -> None:
    pytest.importorskip("torch")
    from infl_array.torch.full.deferred import DeferredBuild

    class Lazy(DeferredBuild):
        seen = ""

        def _build(self) -> None:
            Lazy.seen = current_activity()

    lazy = Lazy()
    lazy.reset_build()
    lazy.prepare()
    assert Lazy.seen == "fitting Lazy"
