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


def _start_long_fill(tmp_path: Path) -> subprocess.Popen[str]:
    """A script filling a large store with 2 workers (0.5 s per block), started in its own
    session, once it says it is filling."""
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
    return proc


def test_ctrl_c_stops_a_fill_with_workers_cleanly(tmp_path: Path) -> None:
    proc = _start_long_fill(tmp_path)
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


def _workers_of(pid: int) -> list[int]:
    """The worker processes (not the resource tracker) of process ``pid`` (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"--multiprocessing-fork" in cmd and b"resource_tracker" not in cmd:
            found.append(int(child))
    return found


def _is_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_workers_end_when_their_filler_is_killed(tmp_path: Path) -> None:
    proc = _start_long_fill(tmp_path)
    deadline = time.monotonic() + 60
    while len(workers := _workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the filler only: nothing can stop its pool
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 30
        while any(map(_is_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_is_running, workers)), "workers outlived their filler"
    finally:
        for pid in workers:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)
