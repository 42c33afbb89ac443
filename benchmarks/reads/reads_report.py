"""The section "Reads against plain zarr (issue 2)" of RESULTS.md, from the result file alone.

:func:`render` takes the record ``benchmarks/results/reads.json`` that ``bench_reads.py``
writes (``results_md.save_result``) and returns the section's markdown; ``render.py`` calls it
to re-render the section, so every figure here comes from the record's ``data``: the reads
against zarr (raw medians, minima, CPU times), the block planning, the codec study and the
first-against-repeated reads. Standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: results_md
from results_md import fmt_t, record_head, table, yes_no

SECTION = "## Reads against plain zarr (issue 2)"
DEFAULT_CODEC = "blosc lz4 5 bitshuffle + crc32c (default)"
ZSTD_CODEC = "blosc zstd 3 bitshuffle + crc32c"

__all__ = ["SECTION", "render", "readme"]


# ---------------------------------------------------------------------- 1. reads vs zarr
def read_cells(r: Mapping[str, Any]) -> list[str]:
    """One row of the reads table: medians, their ratio, the target, spread measures."""
    c = r["cache"]
    cache = "off" if c is None else f"{c[0]} ({c[1] / 2**20:.0f} MiB)"
    t = r["target"]
    ratio = r["ia"] / r["zarr"]
    target = f"<= {t}x" if t is not None else ("(info)" if c is not None else "")
    return [
        r["case"],
        fmt_t(r["ia"]),
        fmt_t(r["zarr"]),
        f"{ratio:.3g}",
        target,
        yes_no(None if t is None else ratio <= t),
        str(r["reps"]),
        f"{r['ratio_min']:.3g}",
        f"{r['ratio_cpu']:.3g}",
        cache,
    ]


READS_HEAD = (
    "case",
    "infl_array",
    "zarr",
    "ratio",
    "target",
    "met",
    "n",
    "ratio of minima",
    "CPU ratio",
    "blocks in cache",
)


def reads_markdown(data: Mapping[str, Any]) -> list[str]:
    """The reads against plain zarr: the store, the table, how to read it."""
    (n0, n1), block, store = data["shape"], tuple(data["block"]), data["store"]
    return [
        f"Fully cached {n0} x {n1} float32 store, blocks {block}, Student-t (df=3) x 1e-3 "
        f"values: filled in {store['fill_s']:.1f} s, {store['raw'] / 1e6:.0f} MB raw, "
        f"{store['stored'] / 1e6:.0f} MB stored (ratio {store['raw'] / store['stored']:.3f}). "
        "`ia.open(path)` against `zarr.open_array(path + '/influence', mode='r')`, same process, "
        "warm page cache, interleaved; medians of n runs. Like with like: the rows with targets "
        "(and the other unlabelled rows) run with infl_array's in-process block cache off "
        "(`arr.block_cache.max_bytes = 0`), so each read decodes its chunks as zarr does. The "
        "rows labelled 'cache on, repeated' are the same reads on a freshly opened array with "
        "the default block cache, repeated after one warm-up read that fills it; the cache "
        "serves reads touching at most 8 blocks, or whose blocks are all cached, so larger "
        "reads bypass it (and leave it empty) and cost what the cache-off rows do. No target "
        "applies to them: plain zarr has no such cache.",
        "",
        *table(READS_HEAD, map(read_cells, data["reads"]), align="lrrrllrrrr"),
        "",
        "Times are medians; ratio = infl_array / zarr medians (the measure the targets apply "
        "to). The ratio of minima and the CPU ratio (medians of process CPU time, all threads) "
        "are less sensitive to other load on a shared machine.",
    ]


# ---------------------------------------------------------------------- 2. planning
def planning_markdown(data: Mapping[str, Any]) -> list[str]:
    """Block planning for one element of a large array: time per call against 1 ms."""
    n0, n1 = data["plan_shape"]
    rows = [
        (p["case"], fmt_t(p["time"]), "< 1 ms", yes_no(p["time"] < 1e-3)) for p in data["plans"]
    ]
    return [
        f"### Block planning for one element of a {n0:,} x {n1:,} array",
        "",
        *table(["case", "time per call", "target", "met"], rows, align="lrll"),
    ]


# ---------------------------------------------------------------------- 3. codecs
def codec_cells(r: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    e = r["t3 x 1e-3"]
    err = "0 (lossless)" if e["bound"] == 0 else f"{e['err']:.2e} ({e['bound']:.2e})"
    by_data = [f"{r[n]['ratio']:.3f}, {r[n]['enc']:.0f}, {r[n]['dec']:.0f}" for n in names]
    return [r["codec"], *by_data, err]


def codecs_markdown(data: Mapping[str, Any]) -> list[str]:
    """The codec study's table and the default's reasons, each figure from this run."""
    rows, names = data["codecs"]["rows"], data["codecs"]["names"]
    b0, b1 = data["block"]
    by_name = {r["codec"]: r for r in rows}
    default, zstd = by_name[DEFAULT_CODEC], by_name[ZSTD_CODEC]
    lossless = [r[n]["ratio"] for r in rows if r[names[0]]["bound"] == 0 for n in names]
    lossless = [x for x in lossless if x > 1.0]  # "no compression" is 1.000
    size = [default[n]["ratio"] / zstd[n]["ratio"] - 1 for n in names]  # zstd's / default's
    slower = [default[n]["enc"] / zstd[n]["enc"] for n in names]
    d = default["t3 x 1e-3"]
    return [
        f"### Codecs on one {b0} x {b1} float32 block of influence-like data",
        "",
        "Data: `t3` = Student-t df=3; `t3 x 1e-3` = the same scaled; `low-rank` = "
        f"({b0} x 512 t3) @ (512 x {b1} t3) x 1e-3/512. Ratio = raw / encoded bytes; MB/s of raw "
        "data (1 MB = 1e6 B), numcodecs directly, medians. Max rel. err is measured on "
        "`t3 x 1e-3` against the bound 2^-(keepbits+1).",
        "",
        *table(
            ["codec", *(f"{n}: ratio, enc, dec MB/s" for n in names), "max rel. err (bound)"],
            [codec_cells(r, names) for r in rows],
            align="l" + "r" * len(names) + "l",
        ),
        "",
        "Chosen default (`ia.Compression()`): blosc lz4 level 5 with bit-shuffle plus a CRC32C "
        f"checksum; on `t3 x 1e-3` ratio {d['ratio']:.3f}, encode {d['enc']:.0f} MB/s, decode "
        f"{d['dec']:.0f} MB/s. The mantissas of heavy-tailed float32 values are close to "
        f"random, so every lossless codec lands at {min(lossless):.2f}-{max(lossless):.2f}x in "
        "this run; bit-shuffle wins what there is (the sign and exponent bits). zstd-3 with "
        f"bit-shuffle differs in size from the default by {100 * min(size):+.1f}% to "
        f"{100 * max(size):+.1f}% but encodes {min(slower):.1f}-{max(slower):.1f}x slower here "
        "(the three data sets), which shows on the write path of "
        "`fill()` (issue 4), so lz4 is the default (`Compression(cname='zstd')` remains); real "
        "gains need `Compression(keepbits=...)` (BitRound, relative error at most "
        "2^-(keepbits+1)).",
    ]


# ---------------------------------------------------------------------- 4. first vs repeated
FIRST_HEAD = (
    "block function",
    "fn alone per block",
    "first read",
    "repeated, cache on",
    "ratio",
    "repeated, cache off",
    "ratio",
    "fn cost per block for 100x (cache on / off)",
)


def first_markdown(data: Mapping[str, Any]) -> list[str]:
    """The first (computing) read of a fresh slice against its repeats, cache on and off."""
    b0, b1 = data["block"]
    rows = [
        [
            f["fn"],
            fmt_t(f["fn_block"]),
            fmt_t(f["first"]),
            fmt_t(f["cached"]),
            f"{f['first'] / f['cached']:.1f}x",
            fmt_t(f["decoded"]),
            f"{f['first'] / f['decoded']:.1f}x",
            f"{fmt_t(f['need'])} / {fmt_t(f['need_decoded'])}",
        ]
        for f in data["first"]
    ]
    return [
        "### First (computing) read against the repeated read",
        "",
        f"A {2 * b0} x {2 * b1} slice (2 x 2 blocks) of the store, a slice not read before each "
        "time: the first read computes and writes 4 blocks (checked with "
        "`arr.stats.blocks_computed`); the repeated read (3 times) is served by the block "
        "cache, which keeps computed blocks as they are written; then, with the cache off, 3 "
        "more repeats decode the 4 chunks. Medians.",
        "",
        *table(FIRST_HEAD, rows, align="lrrrrrrr"),
        "",
        "The last column is the block function cost at which this first read would be 100x "
        "its repeated read (the SPEC's cache promise), from the measured repeated time and the "
        "first read's non-fn overhead (encode + write).",
    ]


# ---------------------------------------------------------------------- the section
def render(record: Mapping[str, Any]) -> str:
    """The whole section from the record ``reads``."""
    data = record["data"]
    lines = record_head(record)
    for part in (reads_markdown(data), planning_markdown(data), codecs_markdown(data)):
        lines += ["", *part]
    lines += ["", *first_markdown(data)]
    return "\n".join(lines) + "\n"


def readme(record: Mapping[str, Any]) -> str:
    """README's sentence on cached reads: the range of the cache-off ratios against zarr."""
    rows = [r for r in record["data"]["reads"] if r["cache"] is None and r["target"] is not None]
    ratios = [r["ia"] / r["zarr"] for r in rows]
    minima = [r["ratio_min"] for r in rows]
    n0, n1 = record["data"]["shape"]
    load = "/".join(f"{x:.0f}" for x in record["load"]["start"][:1] + record["load"]["end"][:1])
    return (
        f"- Reads of a fully cached {n0:,} x {n1:,} float32 store, decoding every chunk as plain "
        f"zarr does (full read, row, column, element): {min(ratios):.2f}-{max(ratios):.2f}x "
        f"zarr's time (ratio of medians; of minima, less sensitive to other load, "
        f"{min(minima):.2f}-{max(minima):.2f}x), `{record['command']}`, "
        f"{record['date'][:10]}, load average {load} at start/end on 2 cores. Repeated small "
        "reads come from an in-memory cache of decoded blocks.\n"
    )
