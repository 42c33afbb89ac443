"""The infl-array command: demo twice (second run computes nothing), info, top, verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CountingFn, influence_like
from picture_checks import assert_demo_picture

import infl_array as ia
from infl_array.cli import main


def test_demo_builds_then_reuses_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    from infl_array.demo import run

    store = tmp_path / "demo"
    first = run(store)
    out = capsys.readouterr().out
    assert first["computed"] > 0 and first["read"] == 0
    assert "most helpful train images" in out and "most harmful train images" in out
    assert "label flipped" in out
    # influence finds the flipped labels far above their 5% share
    assert first["harmful_flipped"] > 0.3
    assert first["helpful_same_label"] > 0.7
    assert_demo_picture(store, first, out)
    assert main(["demo", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"computed 0 blocks and read {first['computed']} from the store" in out


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    full = influence_like((12, 9), seed=4)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=full.shape, block_shape=(5, 4)
    )
    arr.fill(progress=False)
    return tmp_path / "s", full


def test_info(store: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(store[0])]) == 0
    out = capsys.readouterr().out
    assert "shape=(12, 9)" in out and "9/9" in out and '"block_shape"' in out


def test_top(store: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    path, full = store
    assert main(["top", str(path), "--k", "3", "--test", "2"]) == 0
    line = capsys.readouterr().out.strip()
    best = np.argsort(-full[2], kind="stable")[:3]
    assert line.startswith("test 2: most helpful train points " + str(best[0]) + ":")
    assert main(["top", str(path), "--k", "2", "--harmful"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and "most harmful" in lines[0]
    assert lines[0].split()[6].rstrip(":") == str(int(np.argmin(full[0])))


def test_verify_and_errors(
    store: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = store
    assert main(["verify", str(path), "--quiet"]) == 0
    assert "all 9 stored blocks pass" in capsys.readouterr().out
    chunk = path / "influence" / "c" / "1" / "1"
    data = bytearray(chunk.read_bytes())
    data[-3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert main(["verify", str(path), "--quiet"]) == 1
    assert "(1, 1)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["top", str(path), "--test", "99"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_expected_errors_are_one_paragraph_and_the_traceback_is_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "nothing")
    assert main(["info", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no infl_array store at") and missing in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="no infl_array store"):
        main(["--traceback", "info", missing])
    monkeypatch.setenv("INFL_ARRAY_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="no infl_array store"):
        main(["info", missing])
    monkeypatch.setenv("INFL_ARRAY_TRACEBACK", "0")
    assert main(["info", missing]) == 2
