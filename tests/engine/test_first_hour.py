"""What a user meets in the first hour: guard rails before work, progress, Ctrl-C, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CountingFn, influence_like

import infl_array as ia
from infl_array.cli import main
from infl_array.engine import block_engine as engine_module

ROOT = Path(__file__).resolve().parents[2]


class Zeros:
    """A block function of zeros that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        self.calls += 1
        return np.zeros((len(rows), len(cols)), dtype=np.float32)


@pytest.mark.parametrize(
    "read",
    [
        lambda a: a[:, :],
        lambda a: a[::2],
        lambda a: a[..., None],
        lambda a: a.oindex[:, :],
        lambda a: a[np.arange(10_000)[:, None], np.arange(1_000_000)[None, :]],
        lambda a: np.asarray(a),
    ],
    ids=["all", "every-other-row", "newaxis", "oindex", "broadcast", "asarray"],
)
def test_a_huge_read_is_refused_before_any_block_is_computed(tmp_path: Path, read: Any) -> None:
    fn = Zeros()
    huge = ia.InfluenceArray.from_function(
        tmp_path / "s", fn, shape=(2_000_000, 2_000_000), block_shape=(256, 4096)
    )
    with pytest.raises(MemoryError, match="materialize_limit_bytes"):
        read(huge)
    assert fn.calls == 0 and not huge.computed.any()
    assert huge[:2, :5].shape == (2, 5) and fn.calls == 1  # small reads work


def test_the_read_limit_is_the_array_limit(tmp_path: Path) -> None:
    fn = Zeros()
    arr = ia.InfluenceArray.from_function(tmp_path / "s", fn, shape=(64, 1024))
    arr.materialize_limit_bytes = 1024
    with pytest.raises(MemoryError, match=r"shape \(2, 1024\).*nothing was computed"):
        arr[:2]
    assert arr[0, :256].shape == (256,) and fn.calls == 1


def test_reads_that_take_long_show_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(engine_module, "READ_PROGRESS_DELAY_S", 0.0)
    full = influence_like((12, 12))
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(3, 3)
    )
    arr[:6]
    assert "compute" in capsys.readouterr().err
    arr.block_cache.max_bytes = 0
    arr.read_progress = False
    arr[6:]
    assert capsys.readouterr().err == ""


class InterruptAt:
    """A block function that raises KeyboardInterrupt (Ctrl-C) at its ``n``-th call."""

    def __init__(self, full: np.ndarray, n: int) -> None:
        self.fn, self.n = CountingFn(full), n

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        if len(self.fn.calls) + 1 == self.n:
            raise KeyboardInterrupt
        return self.fn(rows, cols)


@pytest.mark.parametrize("how", ["read", "fill"])
def test_ctrl_c_says_what_was_kept_and_that_a_rerun_resumes(tmp_path: Path, how: str) -> None:
    full = influence_like((12, 12))
    fn = InterruptAt(full, n=4)
    arr = ia.InfluenceArray.from_function(tmp_path / "s", fn, shape=full.shape, block_shape=(3, 3))
    with pytest.raises(KeyboardInterrupt) as info:
        arr[:] if how == "read" else arr.fill(progress=False)
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "3 of the 16 blocks" in note and "arr.fill()" in note
    assert int(arr.computed.sum()) == 3
    fn.n = 0
    np.testing.assert_array_equal(arr[:], full)
    assert len(fn.fn.calls) == 16  # the 3 kept blocks were not computed again


def test_info_shows_whole_fingerprints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    from infl_array.torch import DirectInfluence

    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    model = torch.nn.Linear(3, 2).double()
    infl = DirectInfluence(model, torch.nn.functional.cross_entropy, 0.1).fit((x, y))
    arr = ia.InfluenceArray.create(tmp_path / "s", infl, test=(x, y), train=(x, y))
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    for value in arr.meta.fingerprints.values():
        assert value.replace('"', '\\"') in out  # whole, JSON-escaped


def test_stale_error_says_which_setting_differs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from infl_array.torch import CgInfluence

    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    model = torch.nn.Linear(3, 2).double()
    loss = torch.nn.functional.cross_entropy
    infl = CgInfluence(model, loss, 0.1).fit((x, y))
    ia.InfluenceArray.create(tmp_path / "s", infl, test=(x, y), train=(x, y))
    other = CgInfluence(model, loss, 0.1, maxiter=7).fit((x, y))
    with pytest.raises(ia.StaleCacheError, match=r"store has maxiter=null, given maxiter=7"):
        ia.open(tmp_path / "s", other, test=(x, y), train=(x, y))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    full = influence_like((40, 9), seed=4)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(5, 4)
    )
    arr.fill(progress=False)
    return tmp_path / "s"


def test_top_refuses_k_below_one(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", str(store), "--k", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--k must be at least 1" in captured.err


def test_top_into_a_closed_pipe_ends_quietly(store: Path) -> None:
    script = (
        f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', 'infl_array.cli', "
        f"'top', {str(store)!r}, '--k', '3'], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
        "p.stdout.readline(); p.stdout.close(); err = p.stderr.read(); "
        "print(p.wait(), repr(err.decode()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    code, err = done.stdout.split(" ", 1)
    assert code == "0" and "Broken pipe" not in err and "Error" not in err, done.stdout


def test_small_blocks_explain_a_compression_ratio_below_one(tmp_path: Path) -> None:
    full = influence_like((8, 8), seed=1)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(2, 2)
    )
    arr.fill(progress=False)
    text = repr(arr)
    assert "too small to compress" in text and "larger blocks" in text


def test_refusals_of_interop_name_the_lazy_route(tmp_path: Path) -> Any:
    full = influence_like((8, 8), seed=1)
    arr = ia.InfluenceArray.from_function({}, CountingFn(full), shape=full.shape)
    with pytest.raises(TypeError, match="to_dask"):
        arr == arr  # noqa: B015 - the comparison itself must raise
