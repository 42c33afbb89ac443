"""Shared test helpers: a materialised matrix behind a block function that counts its calls."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import infl_array as ia


class CountingFn:
    """``fn(rows, cols)`` over a fixed matrix, recording every block it is asked for."""

    def __init__(self, full: np.ndarray) -> None:
        self.full = full
        self.calls: list[tuple[int, int, int, int]] = []

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        assert isinstance(rows, range) and isinstance(cols, range)
        assert rows.step == 1 and cols.step == 1
        self.calls.append((rows.start, rows.stop, cols.start, cols.stop))
        return self.full[rows.start : rows.stop, cols.start : cols.stop].copy()


def influence_like(shape: tuple[int, int], seed: int = 0, dtype: str = "float32") -> np.ndarray:
    """Roughly normal values with heavy tails, like influence matrices."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(df=3, size=shape).astype(dtype)


def block_fn_module_level(rows: range, cols: range) -> np.ndarray:
    """A picklable block function (for process workers): ``100 * row + col``."""
    return np.add.outer(np.arange(rows.start, rows.stop) * 100.0, np.arange(cols.start, cols.stop))


class LoggedFactors:
    """A factorised influence model whose every factor call is appended to a log file.

    The data's first feature is the sample index, so a call's line names the index range it
    computed: ``"<kind> <start> <stop> <pid>"``. Factors are a fixed function of the features,
    so blocks are reproducible in any process.
    """

    def __init__(self, log: str, width: int = 4, delay: float = 0.0) -> None:
        self.log, self.width, self.delay = log, width, delay

    def _factors(self, kind: str, x: Any) -> np.ndarray:
        import os
        import time

        x = np.asarray(x, dtype=np.float64)
        with open(self.log, "a") as f:
            f.write(f"{kind} {int(x[0, 0])} {int(x[-1, 0]) + 1} {os.getpid()}\n")
        time.sleep(self.delay)
        scale = np.arange(1, self.width + 1)
        return np.sin(np.outer(x[:, 0] + x[:, 1], scale) + (kind == "test"))

    def test_factors(self, x: Any, y: Any) -> np.ndarray:
        return self._factors("test", x)

    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        return self._factors("train", x)

    def influence_config(self) -> dict[str, Any]:
        return {"model": "LoggedFactors", "width": self.width}


def indexed_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` whose first feature is the sample index (see :class:`LoggedFactors`)."""
    rng = np.random.default_rng(seed)
    x = np.stack([np.arange(n, dtype=np.float64), rng.standard_normal(n)], axis=1)
    return x, np.zeros(n, dtype=np.int64)


def logged_calls(log: str) -> list[tuple[str, int, int, int]]:
    """The factor calls :class:`LoggedFactors` logged: ``(kind, start, stop, pid)``."""
    out = []
    with open(log) as f:
        for line in f:
            kind, start, stop, pid = line.split()
            out.append((kind, int(start), int(stop), int(pid)))
    return out


class SlowLoggedFn:
    """A picklable block function ``1000 * row + col`` that sleeps and logs each block it computes.

    Each call appends ``"<row start> <col start> <pid>"`` to ``log`` (one short append: whole
    lines even from several processes). With ``kill_once`` set to a path, the first call in
    any process that creates that file kills its own process (SIGKILL), as an out-of-memory
    kill would; ``fail_at`` names a block (row start, col start) whose computation raises.
    """

    def __init__(
        self,
        log: str,
        delay: float = 0.0,
        kill_once: str | None = None,
        fail_at: tuple[int, int] | None = None,
    ) -> None:
        self.log, self.delay, self.kill_once, self.fail_at = log, delay, kill_once, fail_at

    def __call__(self, rows: range, cols: range) -> np.ndarray:
        import os
        import signal
        import time

        if self.kill_once is not None:
            try:
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
        if self.fail_at == (rows.start, cols.start):
            raise ValueError(f"block at {self.fail_at} fails on purpose")
        time.sleep(self.delay)
        with open(self.log, "a") as f:
            f.write(f"{rows.start} {cols.start} {os.getpid()}\n")
        row_part = np.arange(rows.start, rows.stop) * 1000.0
        return np.add.outer(row_part, np.arange(cols.start, cols.stop))


def logged_blocks(log: str) -> list[tuple[int, int, int]]:
    """The blocks :class:`SlowLoggedFn` computed: ``(row start, col start, pid)``."""
    try:
        with open(log) as f:
            return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in f)]
    except FileNotFoundError:
        return []


def bounded(fn: Callable[[], Any], seconds: float) -> tuple[Any, float]:
    """``fn()`` run in a thread: ``(its result, seconds it took)``, its exception re-raised, or
    a failure when it has not ended within ``seconds`` (a hang fails instead of blocking)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), (
        f"still running after {seconds} s: it hangs; where each thread waits:\n{_stacks()}"
    )
    if "error" in out:
        raise out["error"]
    return out["value"], time.monotonic() - started


def _stacks() -> str:
    """The stack of every thread of the process (where a hang waits)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )


class FeatureFactors:
    """A factorised model whose factors are the data's features: ``I = x_test @ x_train.T``.

    Integer features give many tied values (top-k's tie rule is then exercised).
    """

    def test_factors(self, x: Any, y: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def influence_config(self) -> dict[str, Any]:
        return {"model": type(self).__name__}


class ScaledProductFactors(FeatureFactors):
    """Declares ``factor_product``: the block is ``-2 * x_test @ x_train.T`` (not the plain
    inner product of its factors)."""

    def factor_product(self, test_f: Any, train_f: Any) -> np.ndarray:
        return -2.0 * np.asarray(test_f) @ np.asarray(train_f).T


def brute_top_k(full: np.ndarray, k: int, axis: int, largest: bool) -> tuple[Any, Any]:
    """The reference: ``np.argsort(-row, kind="stable")[:k]`` per row, in torch.topk's shape."""
    rows = full if axis == 1 else full.T
    order = np.argsort(-rows if largest else rows, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(rows, order, axis=1)
    return (values, order) if axis == 1 else (values.T, order.T)


def integer_data(n: int, width: int, seed: int, spread: int = 2) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.integers(-spread, spread + 1, size=(n, width)).astype(np.float64)
    return x, np.zeros(n)


def model_array(
    path: Path, n_test: int, n_train: int, block_shape: tuple[int, int], seed: int = 0, **kw: Any
) -> tuple[ia.InfluenceArray, np.ndarray]:
    model = kw.pop("model", FeatureFactors())
    test, train = integer_data(n_test, 3, seed), integer_data(n_train, 3, seed + 1)
    arr = ia.InfluenceArray.create(
        path, model, test=test, train=train, block_shape=block_shape, **kw
    )
    full = test[0] @ train[0].T
    if isinstance(model, ScaledProductFactors):
        full = -2.0 * full
    return arr, full
