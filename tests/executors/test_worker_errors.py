"""Errors of ``fill(workers=N)`` name their cause (issue 21): a worker that cannot load the
model says why with its traceback, a task's exception comes back with the worker's traceback,
a script without a ``__main__`` guard is refused before any worker starts, and Ctrl-C stops
the fill without the standard library's ``InvalidStateError``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import LoggedFactors, indexed_data

import infl_array as ia
from infl_array.executors.worker_start import WorkerStartError

ROOT = Path(__file__).resolve().parents[2]


def test_a_model_the_workers_cannot_import_is_explained_with_the_worker_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as a class defined in a notebook: importable here, unknown to a new process
    notebook = types.ModuleType("notebook_cell_7")
    exec(
        "from helpers import LoggedFactors\nclass NotebookModel(LoggedFactors): pass",
        notebook.__dict__,
    )
    monkeypatch.setitem(sys.modules, "notebook_cell_7", notebook)
    model = notebook.NotebookModel(str(tmp_path / "log"))
    arr = ia.InfluenceArray.create(
        tmp_path / "s", model, test=indexed_data(4), train=indexed_data(6), block_shape=(2, 3)
    )
    with pytest.raises(WorkerStartError, match="could not load the array's model") as info:
        arr.fill(progress=False, workers=2)
    message = str(info.value)
    assert "notebook_cell_7" in message and "died" not in message
    assert "Define it in a module the workers can import" in message
    assert "Traceback" in str(info.value.__cause__)  # the worker's own traceback


class FailingFactors(LoggedFactors):
    """Fails in worker processes only (the fill computes a first block here)."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.parent = os.getpid()

    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        if os.getpid() != self.parent:
            raise ValueError(f"train factors refused at sample {int(np.asarray(x)[0, 0])}")
        return super().train_factors(x, y)


def test_an_exception_in_a_worker_travels_back_with_its_traceback(tmp_path: Path) -> None:
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        FailingFactors(str(tmp_path / "log")),
        test=indexed_data(4),
        train=indexed_data(6),
        block_shape=(2, 3),
        factor_disk_budget_bytes=0,
    )
    with pytest.raises(ValueError, match="train factors refused at sample") as info:
        arr.fill(progress=False, workers=2)
    assert "test_worker_errors.py" in str(info.value.__cause__)  # where in the worker
    assert "died" not in str(info.value)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


def _run(script: Path, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


SCRIPT_HEAD = """
import time
import numpy as np
import infl_array as ia

def block(rows, cols):
    time.sleep(DELAY)
    return np.add.outer(np.asarray(rows, float), np.asarray(cols, float))
"""


def test_a_script_without_a_main_guard_is_refused_before_workers_start(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        SCRIPT_HEAD.replace("DELAY", "0")
        + """
arr = ia.InfluenceArray.from_function("s", block, shape=(4, 4), block_shape=(2, 2))
arr.fill(progress=False, workers=2)
""",
    )
    out, err = _run(script).communicate(timeout=120)
    assert 'without an `if __name__ == "__main__":` guard' in err, err
    assert "job.py (line 11)" in err and "died" not in err
    guarded = script.read_text().replace("arr = ia", 'if __name__ == "__main__":\n    arr = ia')
    guarded = guarded.replace("\narr.fill", "\n    arr.fill").replace('"s"', '"t"')
    script.write_text(guarded + "    print('filled', int(arr.computed.sum()))\n")
    proc = _run(script)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "filled 4" in out, err


def test_ctrl_c_stops_a_fill_with_workers_cleanly(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        SCRIPT_HEAD.replace("DELAY", "0.5")
        + """
if __name__ == "__main__":
    arr = ia.InfluenceArray.from_function("s", block, shape=(400, 400), block_shape=(2, 2))
    print("filling", flush=True)
    arr.fill(progress=False, workers=2)
""",
    )
    proc = _run(script, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "filling"
    time.sleep(4.0)  # workers started and busy, each with a task of many 0.5 s blocks
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    start = time.monotonic()
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it did not stop: end it and its workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert time.monotonic() - start < 30  # stopped at once, not after the running tasks
    assert "KeyboardInterrupt" in err
    assert "InvalidStateError" not in err, err
    assert "fill() again" in err  # what was kept, and how to go on
