"""Top-k at scale (issue 23): lossless codecs for stored factors, on a trained model's factors.

The train factors of ``bench_topk.py``'s model (an MLP trained 3 epochs with Adam on a
10-class Gaussian mixture, ``ProjectedInfluence(projection_dim=--projection-dim,
preconditioner="identity")``) are computed and stored by infl_array (a top-k fill of
``--n-train`` train points, blocks of ``--block`` train points); the stored chunks are read back
and written again, chunk by chunk, into zarr arrays with each candidate codec of
:class:`infl_array.Compression` (blosc with bit-shuffle, then the CRC32C checksum every stored
array carries; ``cname="none"``: the raw values and the checksum, what lossless factors were
stored as before). Per codec: bytes against the raw values, and the time to write and to read a
chunk (wall and CPU seconds of the process, the least of ``--repeats`` rounds, the codecs'
order rotating each round); every read is checked equal to the factors written.

Run from the repository root (under a minute)::

    PYTHONPATH=$PWD nice -n 5 python benchmarks/large/bench_topk_codec.py

The record goes to ``benchmarks/results/topk_codec.json`` and the section "Top-k at scale:
factor codecs (issue 23)" of ``benchmarks/RESULTS.md`` (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

import results_md as rmd  # noqa: E402
from bench_topk import add_model_args, fitted, stored_factors  # noqa: E402

SECTION = "## Top-k at scale: factor codecs (issue 23)"
CODECS = {
    "raw + crc32c (before)": {"cname": "none"},
    "blosc lz4 5 bitshuffle + crc32c": {"cname": "lz4", "clevel": 5},
    "blosc lz4 9 bitshuffle + crc32c": {"cname": "lz4", "clevel": 9},
    "blosc zstd 1 bitshuffle + crc32c": {"cname": "zstd", "clevel": 1},
    "blosc zstd 3 bitshuffle + crc32c": {"cname": "zstd", "clevel": 3},
}
"""The candidates, by the :class:`infl_array.Compression` that describes each."""


def clock(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and the process's CPU seconds (every thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def chunk_timings(
    chunks: list[np.ndarray], compression: Any, path: Path
) -> tuple[int, list[float], list[float]]:
    """Write ``chunks`` into a new array of ``compression`` and read them back: its bytes,
    ``[write wall, write cpu]`` and ``[read wall, read cpu]`` per chunk (means)."""
    import zarr

    rows, width = chunks[0].shape
    array = zarr.create_array(
        path,
        shape=(rows * len(chunks), width),
        chunks=(rows, width),
        dtype=chunks[0].dtype,
        compressors=compression.compressors(),
        fill_value=np.nan,
    )
    write, read = [0.0, 0.0], [0.0, 0.0]
    for i, chunk in enumerate(chunks):

        def put(i: int = i, chunk: np.ndarray = chunk) -> None:
            array[i * rows : (i + 1) * rows] = chunk

        _, wall, cpu = clock(put)
        write[0], write[1] = write[0] + wall, write[1] + cpu
    for i, chunk in enumerate(chunks):
        back, wall, cpu = clock(lambda i=i: array[i * rows : (i + 1) * rows])
        read[0], read[1] = read[0] + wall, read[1] + cpu
        if not np.array_equal(back, chunk):
            raise AssertionError(f"{compression} did not give back chunk {i} as written")
    size = sum(f.stat().st_size for f in (path / "c").rglob("*") if f.is_file())
    n = len(chunks)
    return size, [w / n for w in write], [r / n for r in read]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import infl_array as ia

    infl, train, test, out = fitted(args, args.n_train, args.n_test)
    out["n_train"], out["n_test"] = args.n_train, args.n_test
    rows = args.block[1]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = Path(tmp) / "store"
        arr = ia.InfluenceArray.create(
            store, infl, test=test, train=train, block_shape=tuple(args.block)
        )
        arr.top_k_array(args.k).fill(progress=False)  # stores every train factor
        factors = stored_factors(store, "train")
        chunks = [np.asarray(factors[s : s + rows]) for s in range(0, args.n_train, rows)]
        chunks = [c for c in chunks if len(c) == rows]  # whole chunks only
        out["repeats"], out["chunks"] = args.repeats, len(chunks)
        out["chunk_bytes"] = int(chunks[0].nbytes)
        names = list(CODECS)
        found: dict[str, dict[str, Any]] = {n: {"write": [], "read": []} for n in names}
        for rep in range(args.repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                where = Path(tmp) / f"codec-{rep}-{names.index(name)}"
                size, write, read = chunk_timings(chunks, ia.Compression(**CODECS[name]), where)
                shutil.rmtree(where)
                found[name]["bytes"] = size
                found[name]["write"].append(write)
                found[name]["read"].append(read)
        out["codecs"] = found
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=65_536)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    add_model_args(parser, block=(100, 8192))
    parser.set_defaults(projection_dim=512, train_points=65_536)
    rmd.add_output_args(parser)
    args = parser.parse_args()
    if args.n_train < args.block[1]:
        parser.error(f"--n-train must hold a whole chunk of {args.block[1]} rows (--block)")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    from harness import machine_info

    rmd.measure_and_save(
        "topk_codec",
        SECTION,
        "large/bench_topk_codec.py",
        measure,
        args,
        lambda: machine_info(["torch", "numpy", "zarr", "numcodecs"]),
    )


# ---------------------------------------------------------------------- the section
def least(times: list[list[float]]) -> tuple[float, float]:
    """The least wall and CPU seconds over the rounds.

    >>> least([[2.0, 1.0], [1.5, 1.2]])
    (1.5, 1.0)
    """
    return min(t[0] for t in times), min(t[1] for t in times)


def render(record: Mapping[str, Any]) -> str:
    d = record["data"]
    raw = d["chunks"] * d["chunk_bytes"]
    mib = d["chunk_bytes"] / 2**20
    rounds = min(len(c["write"]) for c in d["codecs"].values())
    lines = rmd.record_head(record)
    lines += [
        "",
        f"Train factors of an MLP ({d['dim']} -> {d['hidden']} -> 10, tanh) trained 3 epochs "
        f"with Adam on a 10-class Gaussian mixture (test accuracy {d['test_accuracy']:.2f}), "
        f'`ProjectedInfluence(projection_dim={d["projection_dim"]}, preconditioner="identity")`, '
        f"factor width {d['width']}: {d['chunks']} chunks of {d['block'][1]:,} train points "
        f"({mib:.1f} MiB each, float32) as infl_array stored them, written again with each "
        f"codec and read back (every read equal to what was written). Times per chunk: the "
        f"least of {rounds} rounds (the codecs' order rotating), wall and CPU seconds (all "
        f"threads; blosc uses {d['threads']}).",
        "",
    ]
    rows = []
    for name, c in d["codecs"].items():
        (ww, wc), (rw, rc) = least(c["write"]), least(c["read"])
        rows.append(
            [
                name,
                rmd.fmt_mb(c["bytes"]),
                f"{100 * c['bytes'] / raw:.1f}%",
                f"{rmd.fmt_t(ww)} ({rmd.fmt_t(wc)})",
                f"{rmd.fmt_t(rw)} ({rmd.fmt_t(rc)})",
            ]
        )
    lines += rmd.table(
        [
            "codec",
            "bytes",
            "of the raw values",
            "write a chunk: wall (CPU)",
            "read a chunk: wall (CPU)",
        ],
        rows,
        align="lrrrr",
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
