"""EkfacInfluence's CPU work with subnormal numbers flushed to zero, on every thread.

The gradients of a confident model are tiny, and float32 arithmetic whose results fall below
``2**-126`` (subnormal numbers) takes a microcode assist per operation on x86 unless the
CPU's flush-to-zero / denormals-are-zero modes are on. They are off by default, and
``torch.set_flush_denormal(True)`` sets them for the calling thread only, not for the
OpenMP threads torch and its BLAS already started. Measured on the 1e7-parameter ladder CNN
(2 threads, ``python benchmarks/micro/subnormal_micro.py``): ``EkfacInfluence`` test factors of 64
points 44.8 s in the caller's thread against 7.5 s with the modes on (6.0x), its fit on 512
points 29.5 s against 20.4 s; a float32 product of values around 1e-20 28 s against 0.2 s
(``python benchmarks/micro/ekfac_product_micro.py --tiny``).

:func:`flush_subnormals` runs a method in a helper thread (one per calling thread, made once)
that turned the modes on before its first parallel region, so the OpenMP threads it starts
inherit them. Values that would be subnormal become 0: below ``2**-126`` (float32) or
``2**-1022`` (float64), far below the rounding of any sum they enter. Work on another device
(CUDA), and calls already in a helper thread, run where they are called. A keyboard interrupt
stops the caller's wait at once; the helper finishes the call it is running in the
background, and, being a daemon thread, does not keep an exiting program waiting.

Only ``EkfacInfluence`` uses it (its fit, factors and products work on full-size per-layer
gradients). ``ProjectedInfluence`` does not: its projected gradients gained nothing, and its fit
ran 8% slower in flush mode (5.2 s against 4.8 s on 3,000 points of the 1e6 CNN).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

__all__ = ["flush_subnormals", "flushing"]

F = TypeVar("F", bound=Callable[..., Any])

_local = threading.local()


def _serve(
    jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]], caller: threading.Thread
) -> None:
    """A helper thread: flush-to-zero on, then run the calls it is given while its caller
    lives."""
    _local.helper = True
    _local.flushing = torch.set_flush_denormal(True)  # False where the CPU cannot
    while True:
        try:
            call, future = jobs.get(timeout=1.0)
        except queue.Empty:
            if caller.is_alive():
                continue
            return
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)


def flushing() -> bool:
    """Whether subnormals are flushed in the calling thread (True in a helper on x86)."""
    return bool(getattr(_local, "flushing", False))


def _submit(call: Callable[[], Any]) -> Future[Any]:
    """Run ``call`` in the calling thread's helper (a daemon thread, started on first use: an
    interrupted program exits without waiting for the call it is running)."""
    jobs = getattr(_local, "jobs", None)
    if jobs is None:
        jobs = queue.SimpleQueue()
        caller = threading.current_thread()
        helper = threading.Thread(
            target=_serve, args=(jobs, caller), name="infl-array-ftz", daemon=True
        )
        helper.start()
        _local.jobs = jobs
    future: Future[Any] = Future()
    jobs.put((call, future))
    return future


def _on_cpu(owner: Any) -> bool:
    model = getattr(owner, "model", None)
    if not isinstance(model, torch.nn.Module):
        return True
    param = next(iter(model.parameters()), None)
    return param is None or param.device.type == "cpu"


def flush_subnormals(method: F) -> F:
    """Run ``method`` (of an object with a ``model``) in the flush-to-zero helper thread."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "helper", False) or not _on_cpu(self):
            return method(self, *args, **kwargs)
        grad = torch.is_grad_enabled()

        def call() -> Any:
            with torch.set_grad_enabled(grad):
                return method(self, *args, **kwargs)

        return _submit(call).result()

    return wrapper  # type: ignore[return-value]
