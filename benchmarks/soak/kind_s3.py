"""Fault kind "S3 error": a local moto S3 server that fails requests at random.

A WSGI middleware in front of moto's app answers a random share of requests with
``500 InternalError`` or ``503 SlowDown``, or holds them past the client's read timeout (a
timeout); each such answer is a fault. Each trial fills a small ``from_function`` store on the
server (12 x 15, blocks 4 x 5) and makes :data:`READS` reads of slices of it, then a ``fill()``,
while faults are injected (each read must be right or raise a clear error), then, with
injection off, every stored block must decode and equal the reference, a new ``fill()`` must
compute exactly the missing blocks, and the matrix must equal the reference. Every step has a
time bound.

Two clients: the steps under faults use an impatient one (:func:`fault_options`: 0.5 s
timeouts, one botocore attempt per try of s3fs's own), so faults surface; the store's creation
and the checks after the faults use a patient one (:data:`CHECK_CONFIG`), since they verify the
stored data, not the transport. An error escaping creation or a check is a failed check, counted
as such (its message judged clear or not like any other), never silently as a fault outcome.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from soak_common import Hang, Tally, bounded, check_then_refill, clear_error, now, reference, values

SHAPE, BLOCK = (12, 15), (4, 5)
READ_TIMEOUT_S = 0.5
READS = 8
"""Reads per trial while faults are injected (then one fill)."""
RATES = (0.05, 0.5)
"""Each trial's share of failed requests is drawn uniformly from this range."""
CHECK_CONFIG = {
    "read_timeout": 10.0,
    "connect_timeout": 10.0,
    "retries": {"max_attempts": 5, "mode": "standard"},
}
"""botocore settings of the patient client that creates the stores and checks them."""


class FaultyS3:
    """moto's WSGI app, failing a share of the requests for the stores in ``rates``."""

    def __init__(self, app: Any, rng: random.Random) -> None:
        self.app, self.rng = app, rng
        self.rates: dict[str, float] = {}  # store name ("t3") -> share of requests failed
        self.injected: dict[str, int] = {"500": 0, "503": 0, "timeout": 0}
        self.per_store: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = str(environ.get("PATH_INFO", "")) + "/"
        query = str(environ.get("QUERY_STRING", ""))
        with self.lock:
            fault = None
            store = next((s for s in self.rates if _is_for(s, path, query)), None)
            if store is not None and self.rng.random() < self.rates[store]:
                fault = self.rng.choice(("500", "503") * 3 + ("timeout",))
                self.injected[fault] += 1
                self.per_store[store] = self.per_store.get(store, 0) + 1
        if fault == "timeout":
            time.sleep(READ_TIMEOUT_S * 1.5)  # the client has given up by now
        elif fault is not None:
            code = "InternalError" if fault == "500" else "SlowDown"
            status = "500 Internal Server Error" if fault == "500" else "503 Slow Down"
            start_response(status, [("Content-Type", "application/xml")])
            return [f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()]
        return self.app(environ, start_response)


def _is_for(store: str, path: str, query: str) -> bool:
    """Whether a request (path-style URL) is for the store ``store`` of the bucket."""
    return f"/soak/{store}/" in path or any(f"prefix={store}{sep}" in query for sep in ("%2F", "/"))


def start_server(rng: random.Random) -> tuple[FaultyS3, dict[str, Any], Any]:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    faulty = FaultyS3(DomainDispatcherApplication(create_backend_app), rng)
    server = make_server("127.0.0.1", port, faulty, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "soak", "secret": "soak"}
    import s3fs

    s3fs.S3FileSystem(**opts, config_kwargs=CHECK_CONFIG).mkdir("soak")
    return faulty, opts, server


def fault_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The impatient client of the steps under faults: 0.5 s timeouts, one botocore attempt
    per s3fs try (s3fs tries ``S3FileSystem.retries`` times)."""
    config = {
        "read_timeout": READ_TIMEOUT_S,
        "connect_timeout": READ_TIMEOUT_S,
        "retries": {"max_attempts": 1, "mode": "standard"},
    }
    return {**opts, "config_kwargs": config}


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The patient client that creates and checks the stores (:data:`CHECK_CONFIG`)."""
    return {**opts, "config_kwargs": CHECK_CONFIG}


MAX_EXTRA_S = 600.0
"""Most seconds the faults of one step may add to its bound (the package's longest wait, on a
claim a live owner holds, ends by 10 claim lifetimes: 600 s)."""


def fault_cost_s() -> float:
    """The most one injected fault can add to a step: the client's timeouts (a held request)
    and the longest backoff s3fs waits before trying again."""
    import s3fs

    return 2 * READ_TIMEOUT_S + min(1.7 ** (int(s3fs.S3FileSystem.retries) - 1) * 0.1, 15.0)


def request_worst_s() -> float:
    """The longest one request of the impatient client can take before it raises: each of
    s3fs's tries times out (connect, then read), with s3fs's backoff between them."""
    import s3fs

    tries = int(s3fs.S3FileSystem.retries)
    backoff = sum(min(1.7**i * 0.1, 15.0) for i in range(tries))  # s3fs's _error_wrapper
    return tries * 2 * READ_TIMEOUT_S + backoff


def _zstore(url: str, opts: dict[str, Any]) -> Any:
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, storage_options=opts)


def one_trial(n: int, faulty: FaultyS3, opts: dict[str, Any], rng: random.Random, t: Tally) -> None:
    import infl_array as ia

    url = f"s3://soak/t{n}"
    expected = reference(SHAPE)
    patient, impatient = check_options(opts), fault_options(opts)
    bounded(
        lambda: ia.InfluenceArray.from_function(
            url, values, shape=SHAPE, block_shape=BLOCK, storage_options=patient
        )
    )
    prefix = f"t{n}"
    with faulty.lock:
        rng_local = random.Random(rng.randrange(1 << 30))
        faulty.rates[prefix] = rng_local.uniform(*RATES)
    rng = rng_local
    cost = fault_cost_s()

    def step_extra() -> Callable[[], float]:
        """The faults injected into this store since the step began, at ``cost`` each."""
        start = faulty.per_store.get(prefix, 0)
        return lambda: min(MAX_EXTRA_S, cost * (faulty.per_store.get(prefix, 0) - start))

    try:
        for _ in range(READS):
            r0, c0 = rng.randrange(SHAPE[0]), rng.randrange(SHAPE[1])
            sel = (slice(r0, r0 + 5), slice(c0, c0 + 7))
            try:
                got = t.timed(
                    lambda s=sel: ia.open(url, fn=values, storage_options=impatient)[s],
                    step_extra(),
                )
                ok = np.array_equal(got, expected[sel])
                t.outcomes["read right" if ok else "READ WRONG"] += 1
                t.blocks_wrong += not ok
            except Hang:
                raise
            except Exception as exc:
                _classify(exc, "read", t)
        try:
            t.timed(
                lambda: ia.open(url, fn=values, storage_options=impatient).fill(progress=False),
                step_extra(),
            )
            t.outcomes["fill completed"] += 1
        except Hang:
            raise
        except Exception as exc:
            _classify(exc, "fill", t)
    except Hang as exc:
        t.hangs += 1
        t.fail(f"s3 trial {n}: {exc}")
    finally:
        with faulty.lock:
            del faulty.rates[prefix]
            t.faults += faulty.per_store.get(prefix, 0)
    check_then_refill(_zstore(url, patient), expected, t, f"s3 trial {n}")


def _clear(exc: BaseException) -> bool:
    """An error a user can act on: infl_array's own, or one naming the store's URL or the
    object's (an ``OSError`` from :func:`infl_array.storage.remote_errors.storage_error` names
    the store, says the request failed, not the data, and how to retry)."""
    return clear_error(exc) or "s3://" in str(exc) or "endpoint URL" in str(exc)


def _classify(exc: BaseException, op: str, t: Tally) -> None:
    if _clear(exc):
        t.outcomes[f"{op} raised {type(exc).__name__}"] += 1
    else:
        t.unclear_errors += 1
        t.outcomes[f"{op} raised unclear {type(exc).__name__}"] += 1
        t.fail(f"{op}: {type(exc).__name__}: {exc}"[:300])


def run(
    n_faults: int, rng: random.Random, t: Tally, max_s: float, threads: int = 16
) -> dict[str, int]:
    """Trials, ``threads`` at a time (they mostly wait on retries), until ``n_faults``
    requests have been failed or ``max_s`` seconds have passed (no trial starts after that);
    returns the count per answer."""
    t0 = now()
    faulty, opts, server = start_server(rng)
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if t.faults >= n_faults or now() - t0 > max_s:
                    return
                n = next(counter)
                trial_rng = random.Random(rng.randrange(1 << 30))
            local = Tally()
            try:
                one_trial(n, faulty, opts, trial_rng, local)
            except Hang as exc:  # creating the store or checking it, with injection off
                local.hangs += 1
                local.fail(f"s3 trial {n}, creating or checking: {exc}")
            except Exception as exc:  # a failed check: the blocks were not all verified
                local.checks_failed += 1
                local.unclear_errors += not _clear(exc)
                local.fail(f"s3 trial {n}, creating or checking: {exc!r}"[:300])
            with lock:
                t.merge(local)
            if n % 50 == 49:
                print(f"  s3 trial {n + 1}: {t.faults} faults", flush=True)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    try:
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    finally:
        server.shutdown()
    t.outcomes["trials"] = next(counter)
    t.seconds += now() - t0
    return dict(faulty.injected)
