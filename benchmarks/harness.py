"""What the benchmark scripts share to measure: timers, scratch directories, machine facts.

- Paths: the checkout (``ROOT``, put first on ``sys.path`` on import, so that a script run
  from a checkout measures that checkout's ``infl_array``), the scratch folder ``WORK``
  (``benchmarks/_work``, git-ignored) and the pyDVL environment ``.venv-pydvl``.
- Timing: :class:`Timer`, :func:`timed`, :func:`repeat`, :func:`median`, :func:`interleaved`
  (two callables alternately, wall and process CPU time) and :func:`first_then_repeated` (the
  first, computing read of a key against its repeats, block cache on and off).
- Memory: :class:`PeakRSS` (peak resident memory during a block).
- Facts: :func:`machine_info` (host, Python and package versions).
- :func:`scratch_dir` (a fresh folder under ``WORK``, deleted afterwards), :func:`log`
  (progress on stderr) and :func:`ensure_pydvl_venv`.

Standard library only at import (numpy, psutil and infl_array are imported where used): the
pyDVL environment imports this module too.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
VENV_PY = ROOT / ".venv-pydvl" / "bin" / "python"

if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the results)."""
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- timing
def median(xs: Iterable[float]) -> float:
    return statistics.median(xs)


class Timer:
    """``lap()`` returns the seconds since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes (its result is dropped after the clock stops)."""
    t0 = time.perf_counter()
    out = fn()
    t1 = time.perf_counter()
    del out
    return t1 - t0


def repeat(fn: Callable[[], Any], n: int) -> list[float]:
    """Seconds of ``n`` calls of ``fn``, one after the other."""
    return [timed(fn) for _ in range(n)]


def interleaved(
    pair: tuple[Callable[[], Any], Callable[[], Any]], reps: int, warmup: bool = True
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Time two callables ``reps`` times each, alternating which goes first.

    With ``warmup``, each is called once first, untimed (first-touch planning, block existence
    checks, page cache). Returns the wall times of a and b, then their process CPU times (all
    threads).
    """
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    if warmup:
        pair[0]()
        pair[1]()
    for k in range(reps):
        for side in (0, 1) if k % 2 == 0 else (1, 0):
            c0, t0 = time.process_time(), time.perf_counter()
            out = pair[side]()
            t1, c1 = time.perf_counter(), time.process_time()
            del out
            wall[side].append(t1 - t0)
            cpu[side].append(c1 - c0)
    return wall[0], wall[1], cpu[0], cpu[1]


@dataclass
class FirstRead:
    """The first read of a key on an array, and its repeats (seconds)."""

    first: float
    blocks_computed: int
    cached: list[float]
    decoded: list[float]


def first_then_repeated(arr: Any, key: Any, repeats: int) -> FirstRead:
    """Time ``arr[key]`` once (it computes what it touches), then ``repeats`` times with the
    array's block cache as it is, then ``repeats`` times with the cache off and cleared (each
    read decodes its chunks); the cache's bound is restored afterwards.

    Raises ``AssertionError`` if a repeated read computed a block (``arr.stats``).
    """
    before = arr.stats.blocks_computed
    first = timed(lambda: arr[key])
    computed = arr.stats.blocks_computed - before
    cached = repeat(lambda: arr[key], repeats)
    bound = arr.block_cache.max_bytes
    arr.block_cache.max_bytes = 0
    arr.block_cache.clear()
    decoded = repeat(lambda: arr[key], repeats)
    arr.block_cache.max_bytes = bound
    assert arr.stats.blocks_computed == before + computed, "a repeated read computed blocks"
    return FirstRead(first, computed, cached, decoded)


# ---------------------------------------------------------------------- memory
class PeakRSS:
    """Peak RSS of this process during a ``with`` block: psutil sampling (every 2 ms) plus
    ``ru_maxrss``. ``baseline`` is the RSS on entry, ``delta`` the peak over it."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.baseline = 0
        self.stopping = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def sample(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.baseline = self.rss()
        self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = self.baseline
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.sampler.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, self.rss())
        # ru_maxrss is a lifetime peak: it says something only if this block raised it
        if maxrss > self.maxrss_before:
            self.peak = max(self.peak, maxrss)

    @property
    def delta(self) -> int:
        return self.peak - self.baseline


# ---------------------------------------------------------------------- machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or "?"


def ram() -> str:
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        return f"{kb / 2**20:.0f} GiB"
    return "?"


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each package's ``__version__`` in this interpreter."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except ImportError:
            out[name] = "(absent)"
    return out


def machine_info(packages: Iterable[str] = ()) -> dict[str, str]:
    """Host facts (cores, CPU model, RAM, OS, load at start), then :func:`package_versions`."""
    host = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "RAM": ram(),
        "OS": f"{platform.system()} {platform.release()} {platform.machine()}",
        "load at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    return host | package_versions(packages)


# ---------------------------------------------------------------------- scratch, environments
@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder under ``WORK``, deleted afterwards (``WORK`` too once it is empty)."""
    WORK.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}_", dir=WORK))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            WORK.rmdir()  # only when empty: another run may be using it


def ensure_pydvl_venv() -> None:
    """Make sure ``.venv-pydvl`` (numpy<2, pyDVL 0.10.0, torch 2.13.0) works; build it if not."""
    ok = (
        VENV_PY.exists()
        and subprocess.run(
            [str(VENV_PY), "-c", "import pydvl, torch, numpy"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not ok:
        log(".venv-pydvl is missing or incomplete: running .ci/pydvl_env.sh")
        subprocess.run(["bash", str(ROOT / ".ci" / "pydvl_env.sh")], cwd=ROOT, check=True)
