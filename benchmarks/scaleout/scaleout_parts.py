"""The measurements of ``bench_scaleout.py``: factor work per fill, concurrent fillers, the HTTP
requests a block costs on S3 (a local moto server's request log) and the CPU cost of dask's
``MALLOC_TRIM_THRESHOLD_`` setting."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import ROOT, Timer

BENCH = Path(__file__).resolve().parent


class CountingModel:
    """A fitted backend behind the factorised protocol, logging how many samples each factor
    call computed (``"<side> <n> <pid>"`` per call, appended: several processes share the log)."""

    def __init__(self, backend: Any, log: str) -> None:
        self.backend, self.log = backend, log

    def _note(self, side: str, n: int) -> None:
        with open(self.log, "a") as f:
            f.write(f"{side} {n} {os.getpid()}\n")

    def test_factors(self, x: Any, y: Any) -> Any:
        self._note("test", len(x))
        return self.backend.test_factors(x, y)

    def train_factors(self, x: Any, y: Any) -> Any:
        self._note("train", len(x))
        return self.backend.train_factors(x, y)

    def influence_config(self) -> dict[str, Any]:
        return dict(self.backend.influence_config())


def samples_computed(log: Path) -> tuple[Counter[str], int]:
    """Samples computed per side, and the number of processes that computed any."""
    per_side: Counter[str] = Counter()
    pids = set()
    for line in log.read_text().splitlines() if log.exists() else []:
        side, n, pid = line.split()
        per_side[side] += int(n)
        pids.add(pid)
    return per_side, len(pids)


def cpu_busy() -> float:
    """CPU seconds of this process and every process it started (ended ones it waited for,
    and live ones such as dask workers)."""
    import psutil

    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            continue
    return float(total)


def fill_mode(prob: dict[str, Any], backend: Any, mode: str, path: Path) -> dict[str, Any]:
    """One fill of a fresh store in ``mode`` (here, workers=2, cluster, or computing
    ``to_dask()`` on the cluster); what it computed."""
    import infl_array as ia

    log = path.with_suffix(".log")
    model = CountingModel(backend, str(log))
    arr = ia.InfluenceArray.create(
        str(path), model, test=prob["test"], train=prob["train"], block_shape=prob["block"]
    )
    client = cluster = None
    if mode in ("cluster", "to_dask"):
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
    try:
        busy0, t = cpu_busy(), Timer()
        if mode == "here":
            arr.fill(progress=False)
        elif mode == "workers=2":
            arr.fill(progress=False, workers=2)
        elif mode == "to_dask":
            assert client is not None
            client.compute(arr.to_dask()).result()  # every block computed and stored on touch
        else:
            arr.fill(progress=False, client=client)
        wall = t.lap()
        busy = cpu_busy() - busy0
    finally:
        if client is not None:
            client.close()
            cluster.close()
    per_side, procs = samples_computed(log)
    return {
        "mode": mode,
        "wall_s": wall,
        "cpu_util": busy / (wall * (os.cpu_count() or 1)),
        "train_x": per_side["train"] / prob["n_train"],
        "test_x": per_side["test"] / prob["n_test"],
        "blocks": int(ia.open(str(path)).computed.sum()),
        "procs": procs,
        "bytes": arr.stored_bytes(),
    }


FILLER = """
import json, sys, time
sys.path[:0] = [sys.argv[4], sys.argv[5]]
import infl_array as ia
from scaleout_parts import BusyBlocks
store, log, go = sys.argv[1:4]
while not __import__("os").path.exists(go):
    time.sleep(0.002)
t = time.perf_counter()
n = ia.open(store, fn=BusyBlocks(log)).fill(progress=False)
print(json.dumps({"written": n, "wall_s": time.perf_counter() - t}))
"""


class BusyBlocks:
    """A block function that computes for real (a float64 product, tens of milliseconds of one
    core per block) and logs each block it computed."""

    def __init__(self, log: str, inner: int = 1200) -> None:
        self.log, self.inner = log, inner

    def __call__(self, rows: range, cols: range) -> Any:
        import numpy as np

        rng = np.random.default_rng(rows.start * 1_000_003 + cols.start)
        a = rng.standard_normal((len(rows), self.inner))
        b = rng.standard_normal((self.inner, self.inner))
        out = (a @ b @ b.T)[:, : len(cols)] if len(cols) <= self.inner else None
        assert out is not None
        with open(self.log, "a") as f:
            f.write(f"{rows.start} {cols.start} {os.getpid()}\n")
        return out


def concurrent_fillers(path: Path, fillers: int, shape: tuple[int, int]) -> dict[str, Any]:
    """``fillers`` processes fill one fresh store at once; duplicates and wall time."""
    import infl_array as ia

    log, go = path.with_suffix(".log"), path.with_suffix(".go")
    block = (64, 64)
    ia.InfluenceArray.from_function(str(path), BusyBlocks(str(log)), shape=shape, block_shape=block)
    args = [str(path), str(log), str(go), str(BENCH), str(ROOT)]
    procs = [
        subprocess.Popen([sys.executable, "-c", FILLER, *args], stdout=subprocess.PIPE)
        for _ in range(fillers)
    ]
    time.sleep(1.0)  # every process imported and waiting
    t = Timer()
    go.touch()
    outs = [json.loads(p.communicate()[0].decode().splitlines()[-1]) for p in procs]
    wall = t.lap()
    lines = log.read_text().splitlines()
    n_blocks = -(-shape[0] // block[0]) * -(-shape[1] // block[1])
    done = ia.open(str(path)).computed
    return {
        "fillers": fillers,
        "blocks": n_blocks,
        "computations": len(lines),
        "duplicates": len(lines) - len({tuple(x.split()[:2]) for x in lines}),
        "written": [o["written"] for o in outs],
        "wall_s": wall,
        "complete": bool(done.all()),
    }


def s3_requests(path: Path, n_rows: int, block: tuple[int, int]) -> dict[str, Any]:
    """The HTTP requests a fill of a ``from_function`` store makes on a local moto S3 server, and
    those of a fresh handle reading one block row: every request the server logged, by method
    and by what it touched (:func:`request_kind`)."""
    import logging

    import numpy as np
    import s3fs
    from moto.server import ThreadedMotoServer

    import infl_array as ia

    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")  # the server logs one line per request here
    saved = (werkzeug.level, werkzeug.propagate)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(log)
    with socket.socket() as probe:  # a free port (moto does not say which port=0 chose)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
    try:
        s3fs.S3FileSystem(**opts).mkdir("bench")
        fn = BusyBlocks(str(path.with_suffix(".log")), inner=64)
        arr = ia.InfluenceArray.from_function(
            "s3://bench/store", fn, shape=(n_rows, block[1] * 8), block_shape=block,
            storage_options=opts,
        )  # fmt: skip
        fill = log.during(lambda: arr.fill(progress=False))
        reopened = ia.open("s3://bench/store", storage_options=opts)
        read = log.during(lambda: np.asarray(reopened[: block[0]]))
    finally:
        server.stop()
        werkzeug.removeHandler(log)
        werkzeug.setLevel(saved[0])
        werkzeug.propagate = saved[1]
    return {"blocks": fill["result"], "fill": fill["requests"], "read_row": read["requests"],
            "row_blocks": 8}  # fmt: skip


REQUEST = re.compile(r"(GET|PUT|HEAD|DELETE|POST) (\S+) HTTP/")


def request_kind(target: str) -> str:
    """What a request touched: ``listing``, ``bulk delete`` (one request for several keys),
    ``claim``, ``chunk``, ``metadata`` or ``other``."""
    path, _, query = target.partition("?")
    if "list-type=" in query:
        return "listing"
    if query.startswith("delete"):
        return "bulk delete"
    if "/claims/" in path:
        return "claim"
    if "/c/" in path:
        return "chunk"
    return "metadata" if path.endswith("zarr.json") else "other"


class RequestLog(logging.Handler):
    """Counts the requests a moto server logs (werkzeug's request lines), by method and kind."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        m = REQUEST.search(record.getMessage())
        if m:
            with self.lock_:
                self.lines.append((m[1], request_kind(m[2])))

    def during(self, fn: Any) -> dict[str, Any]:
        """Run ``fn``; the requests logged meanwhile, as ``{"METHOD kind": count}``."""
        with self.lock_:
            start = len(self.lines)
        result = fn()
        time.sleep(0.5)  # the server logs a request after answering it
        with self.lock_:
            lines = self.lines[start:]
        return {"result": result, "requests": dict(Counter(f"{m} {k}" for m, k in lines))}


def malloc_trim_cpu(backend: Any, test: Any, rows: int, path: Path, reps: int) -> dict[str, Any]:
    """CPU seconds of CG test factors of ``rows`` test points in a fresh process, with dask's
    worker setting ``MALLOC_TRIM_THRESHOLD_=65536`` and without it (glibc reads it at start),
    ``reps`` times each, alternating. The fitted backend reaches the children pickled."""
    import pickle

    with path.open("wb") as f:
        pickle.dump((backend, test[0][:rows], test[1][:rows]), f)
    runs: dict[str, list[float]] = {"plain": [], "malloc_trim_65536": []}
    for k in range(reps):
        for side in ("plain", "malloc_trim_65536")[:: 1 if k % 2 == 0 else -1]:
            env = {key: v for key, v in os.environ.items() if key != "MALLOC_TRIM_THRESHOLD_"}
            if side != "plain":
                env["MALLOC_TRIM_THRESHOLD_"] = "65536"
            cmd = [sys.executable, str(BENCH / "bench_scaleout.py"), "--malloc-child", str(path)]
            out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1])["cpu_s"])
    return {"rows": rows, "runs": runs}


def malloc_child(path: str) -> None:
    """The child of :func:`malloc_trim_cpu`: prints the CPU seconds of the test factors."""
    import pickle

    with open(path, "rb") as f:
        backend, x, y = pickle.load(f)
    c0 = time.process_time()
    backend.test_factors(x, y)
    print(json.dumps({"cpu_s": time.process_time() - c0}))
