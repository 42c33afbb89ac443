"""Two small studies of ``bench_reads.py``: block planning for one element, and codecs.

1. Planning: the time per call of ``plan.plan_outer`` and of ``indexing.getitem`` (with a
   reader that returns at once, with and without planning) for one element of a
   100,000 x 1,000,000 array. Target: under 1 ms.
2. Codecs: compression ratio, encode and decode MB/s (numcodecs directly, 1 MB = 1e6 bytes of
   raw data, medians) of codec chains on one 256 x 4096 block of influence-like data, and the
   maximal relative error of the lossy (BitRound) chains against their bound.

Each study has a ``bench_*`` function (measures, prints progress, returns raw figures); its
part of the section is rendered from the record by ``reads_report.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import log, median, timed
from numcodecs import CRC32C, BitRound, Blosc, Zstd
from reads_data import BLOCK, lowrank_block, t_block
from results_md import fmt_t

from infl_array.arrays import indexing
from infl_array.engine.plan import plan_outer

PLAN_SHAPE = (100_000, 1_000_000)


# ---------------------------------------------------------------------- planning
class NullReader:
    """A reader that plans the blocks (as the real one does) and returns zeros at once."""

    def __init__(self, shape: tuple[int, int], block_shape: tuple[int, int], plan: bool) -> None:
        self.shape = shape
        self.block_shape = block_shape
        self.plan = plan
        self.blocks: list[tuple[int, int]] = []

    def read_outer(self, rows: Any, cols: Any) -> np.ndarray:
        if self.plan:
            self.blocks = plan_outer(rows, cols, self.shape, self.block_shape).blocks
        return np.zeros((indexing.axis_len(rows), indexing.axis_len(cols)), np.float32)

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows), np.float32)


def per_call(fn: Callable[[], Any], quick: bool) -> float:
    """Median over repeats of the mean time of one call (seconds)."""
    loops = 200 if quick else 2000

    def many() -> None:
        for _ in range(loops):
            fn()

    return median(timed(many) / loops for _ in range(5 if quick else 15))


def bench_planning(quick: bool) -> list[dict[str, Any]]:
    shape, dt = PLAN_SHAPE, np.dtype(np.float32)
    plain = NullReader(shape, BLOCK, plan=False)
    planning = NullReader(shape, BLOCK, plan=True)
    key = (54_321, 765_432)
    indexing.getitem(shape, dt, key, planning)
    assert planning.blocks == [(key[0] // BLOCK[0], key[1] // BLOCK[1])], planning.blocks
    one = (slice(key[0], key[0] + 1, 1), slice(key[1], key[1] + 1, 1))
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("`plan.plan_outer` for one element", lambda: plan_outer(*one, shape, BLOCK)),
        (
            "`indexing.getitem` one element, null reader",
            lambda: indexing.getitem(shape, dt, key, plain),
        ),
        (
            "`indexing.getitem` one element + `plan_outer`",
            lambda: indexing.getitem(shape, dt, key, planning),
        ),
        (
            "`indexing.getitem` `[-1, -1]` + `plan_outer`",
            lambda: indexing.getitem(shape, dt, (-1, -1), planning),
        ),
    ]
    rows = []
    for name, fn in cases:
        t = per_call(fn, quick)
        rows.append({"case": name, "time": t})
        log(f"  {name:52s} {fmt_t(t):>10s}  target < 1 ms")
    return rows


# ---------------------------------------------------------------------- codecs
def codec_chains() -> list[tuple[str, list[Any], int | None]]:
    """``(name, codecs in encoding order, BitRound keepbits or None)``, the default first."""
    bit, byte = Blosc.BITSHUFFLE, Blosc.SHUFFLE
    default = [Blosc("lz4", 5, bit), CRC32C()]
    return [
        ("blosc lz4 5 bitshuffle + crc32c (default)", default, None),
        ("blosc zstd 3 bitshuffle + crc32c", [Blosc("zstd", 3, bit), CRC32C()], None),
        ("blosc zstd 3 byte-shuffle + crc32c", [Blosc("zstd", 3, byte), CRC32C()], None),
        ("blosc zstd 1 bitshuffle + crc32c", [Blosc("zstd", 1, bit), CRC32C()], None),
        ("blosc lz4 5 byte-shuffle + crc32c", [Blosc("lz4", 5, byte), CRC32C()], None),
        ("zstd 3 alone, with its checksum", [Zstd(level=3, checksum=True)], None),
        ("no compression, crc32c only", [CRC32C()], None),
        ("BitRound 16 + default", [BitRound(keepbits=16), *default], 16),
        ("BitRound 12 + default", [BitRound(keepbits=12), *default], 12),
    ]


def encode(chain: list[Any], data: np.ndarray) -> bytes:
    buf: Any = data
    for codec in chain:
        buf = codec.encode(buf)
    return bytes(buf)


def decode(chain: list[Any], buf: bytes, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    out: Any = buf
    for codec in reversed(chain):
        if isinstance(codec, BitRound):
            out = np.frombuffer(out, dtype=dtype)  # BitRound decodes as identity
        out = codec.decode(out)
    return np.frombuffer(out, dtype=dtype).reshape(shape)


def codec_on(chain: list[Any], keepbits: int | None, data: np.ndarray, reps: int) -> dict:
    """Ratio, encode and decode MB/s and relative error of one chain on one block."""
    buf = encode(chain, data)
    back = decode(chain, buf, data.dtype, data.shape)
    bound = 0.0 if keepbits is None else 2.0 ** -(keepbits + 1)
    if keepbits is None:
        np.testing.assert_array_equal(back, data)
        err = 0.0
    else:
        err = float(np.max(np.abs(back / data - 1.0)))
        assert err <= bound * (1 + 1e-6), (chain, err)
    enc_t, dec_t = [], []
    for _ in range(reps):
        enc_t.append(timed(lambda: encode(chain, data)))
        dec_t.append(timed(lambda: decode(chain, buf, data.dtype, data.shape)))
    mb = data.nbytes / 1e6
    return {
        "ratio": data.nbytes / len(buf),
        "enc": mb / median(enc_t),
        "dec": mb / median(dec_t),
        "err": err,
        "bound": bound,
    }


def bench_codecs(quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    rows_r, cols_r = range(0, BLOCK[0]), range(0, BLOCK[1])
    datasets = {
        "t3": t_block(rows_r, cols_r, scale=1.0),
        "t3 x 1e-3": t_block(rows_r, cols_r, scale=1e-3),
        "low-rank t3 factors": lowrank_block(rows_r, cols_r),
    }
    reps = 5 if quick else 15
    results = []
    for cname, chain, keepbits in codec_chains():
        row: dict[str, Any] = {"codec": cname}
        for dname, data in datasets.items():
            row[dname] = codec_on(chain, keepbits, data, reps)
        results.append(row)
        cells = "  ".join(
            f"{d}: {row[d]['ratio']:.3f}x enc {row[d]['enc']:.0f} dec {row[d]['dec']:.0f} MB/s"
            for d in datasets
        )
        log(f"  {cname:44s} {cells}")
    return results, list(datasets)
