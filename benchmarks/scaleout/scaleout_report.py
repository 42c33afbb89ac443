"""The section "Scale-out (issue 11)" of RESULTS.md, from the record ``scaleout``.

:func:`render` takes the record ``benchmarks/results/scaleout.json`` that ``bench_scaleout.py``
writes and returns the section; every figure comes from the record's ``data`` (the paper
estimate is computed here from the measured unit costs). :func:`readme_malloc` gives README's
sentence on dask's ``MALLOC_TRIM_THRESHOLD_``. Standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
import results_md
from harness import median

SECTION = "## Scale-out (issue 11)"

__all__ = ["SECTION", "readme_malloc", "render"]


def estimate(costs: Mapping[str, float], prob: Mapping[str, Any], block_bytes: float) -> list[str]:
    """100,000 x 10,000,000 on 64 workers, from the measured unit costs."""
    n_test, n_train, workers = 100_000, 10_000_000, 64
    rows, cols = 256, 4096
    n_blocks = -(-n_test // rows) * -(-n_train // cols)
    width = prob["n_params"]
    train_s = n_train * costs["train"]
    test_s = n_test * costs["test"]
    product_s = n_blocks * costs["product"] * (rows * cols) / (prob["block"][0] * prob["block"][1])
    factor_gb = (n_train + n_test) * width * 4 / 1e9
    total = train_s + test_s + product_s
    per_block_mb = block_bytes * (rows * cols) / (prob["block"][0] * prob["block"][1]) / 1e6
    return [
        f"- Work: train gradients {train_s / 3600:.1f} CPU-h ({costs['train'] * 1e3:.3f} ms per "
        f"sample), test factors (CG solves) {test_s / 3600:.1f} CPU-h "
        f"({costs['test'] * 1e3:.2f} ms per sample), products {product_s / 3600:.1f} CPU-h for "
        f"{n_blocks:,} blocks of {rows} x {cols}: {total / 3600:.1f} CPU-h in all, "
        f"{total / workers / 3600:.2f} h on {workers} workers at the measured per-core speed, "
        "each factor computed once.",
        f"- Each worker computes {n_train // workers:,} train and {n_test // workers:,} test "
        f"samples' factors (phase 1) and writes them: {factor_gb:,.0f} GB of float32 factors "
        f"for {width:,} parameters (set `factor_disk_budget_bytes` above that; the default 8 GiB "
        "per side would keep only the test side, and train gradients would then be recomputed "
        "per block row group).",
        f"- Phase 2: {n_blocks // workers:,} blocks per worker; each reads the factor blocks of "
        f"its columns (one train block, {n_test // rows} test blocks per column, "
        f"{(cols + n_test) * width * 4 / 1e9:.1f} GB per column) and writes "
        f"{per_block_mb:.1f} MB per block (compressed, as measured), "
        f"{n_blocks * per_block_mb / 1e6:.1f} TB in all.",
    ]


def markdown(data: Mapping[str, Any]) -> list[str]:
    """Parts 1-4 of the section (the estimate is part 5)."""
    modes, fillers, s3, prob = data["modes"], data["fillers"], data["s3"], data["problem"]
    cg = prob["cg"]
    out = [
        f"### 1. Factor work per fill: {prob['n_test']:,} x {prob['n_train']:,} CG store, "
        f"blocks {tuple(prob['block'])}, MLP ({prob['n_params']:,} parameters), CG on the "
        f"Hessian of the first {prob['n_fit']:,} train points (regularization "
        f"{cg['regularization']}, rtol {cg['rtol']:g}, atol {cg['atol']:g})",
        "",
        "Times each sample's factors were computed (1.00 = once), summed over every process.",
        "",
    ]
    rows = [
        (m["mode"], f"{m['train_x']:.2f}", f"{m['test_x']:.2f}", m["blocks"], m["procs"],
         results_md.fmt_t(m["wall_s"]), f"{m['cpu_util']:.0%}",
         f"{modes[0]['wall_s'] / m['wall_s']:.2f}x")
        for m in modes
    ]  # fmt: skip
    head = ("fill", "train x", "test x", "blocks stored", "processes computing", "wall", "CPU util",
            "speed-up")  # fmt: skip
    out += results_md.table(head, rows, "lrrrrrrr")
    fills = [m for m in modes if m["mode"] != "to_dask"]
    equal = all(m["train_x"] == 1.0 and m["test_x"] == 1.0 for m in fills)
    out += [
        "",
        f"Each factor once per fill, here, with workers=2 and on the cluster (equal counts): "
        f"{results_md.yes_no(equal)}. `to_dask()` promises less (the model reaches each worker "
        "once; chunk tasks run in any order): factor blocks are claimed across processes once "
        "the store keeps their side, so only the first factor block of a side can be computed "
        "by two workers at once.",
    ]
    out += ["", "### 2. Concurrent fillers (100 blocks, CPU-bound block function)", ""]
    rows = [
        (f["fillers"], f["computations"], f["duplicates"],
         f"{f['duplicates'] / f['blocks']:.1%}", " / ".join(map(str, f["written"])),
         results_md.fmt_t(f["wall_s"]), results_md.yes_no(f["complete"]))
        for f in fillers
    ]  # fmt: skip
    head = ("fillers", "computations", "duplicates", "share", "written by each", "wall",
            "complete")  # fmt: skip
    out += results_md.table(head, rows, "rrrrlrl")
    dup = fillers[-1]["duplicates"] / fillers[-1]["blocks"]
    out += ["", f"Target < 5% duplicates with 4 fillers: {results_md.yes_no(dup < 0.05)}."]
    out += ["", *s3_markdown(s3), "", *malloc_markdown(data["malloc_trim"])]
    return out


def s3_markdown(s3: Mapping[str, Any]) -> list[str]:
    """The HTTP requests of a fill per block, and of a fresh handle's block-row read."""
    n = s3["blocks"]
    fill = s3["fill"]
    total = sum(fill.values())
    by_kind: dict[str, int] = {}
    for key, count in fill.items():
        kind = key.split(" ", 1)[1]
        by_kind[kind] = by_kind.get(kind, 0) + count
    rows = [(k, v, f"{v / n:.2f}") for k, v in sorted(fill.items())]
    read = s3["read_row"]
    return [
        "### 3. S3 requests (local moto server, counted from its request log)",
        "",
        f"A fill of {n} blocks made {total} HTTP requests, {total / n:.2f} per block ("
        + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(by_kind.items()))
        + f"). A fresh handle reading one block row ({s3['row_blocks']} blocks) made "
        f"{sum(read.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(read.items())) + ".",
        "",
        *results_md.table(("request (method, what)", "in the fill", "per block"), rows, "lrr"),
    ]


def malloc_markdown(m: Mapping[str, Any]) -> list[str]:
    """CPU of CG test factors with dask's ``MALLOC_TRIM_THRESHOLD_=65536`` and without."""
    plain, trim = m["runs"]["plain"], m["runs"]["malloc_trim_65536"]
    return [
        "### 4. `MALLOC_TRIM_THRESHOLD_=65536` (dask's worker setting) against a plain process",
        "",
        f"CPU seconds of the CG test factors of {m['rows']} points in a fresh process, "
        f"{len(plain)} times each, alternating: plain {median(plain):.2f} s (runs "
        + ", ".join(f"{x:.2f}" for x in plain)
        + f"), with the setting {median(trim):.2f} s (runs "
        + ", ".join(f"{x:.2f}" for x in trim)
        + f"): {median(trim) / median(plain):.2f}x the CPU.",
    ]


def render(record: Mapping[str, Any]) -> str:
    """The whole section from the record ``scaleout``."""
    data = record["data"]
    modes = data["modes"]
    est = estimate(data["unit_costs"], data["problem"], modes[0]["bytes"] / modes[0]["blocks"])
    lines = [*results_md.record_head(record), "", *markdown(data)]
    lines += ["", "### 5. Paper estimate: 100,000 x 10,000,000 on 64 workers", "", *est]
    return "\n".join(lines) + "\n"


def readme_malloc(record: Mapping[str, Any]) -> str:
    """README's sentence on ``MALLOC_TRIM_THRESHOLD_``, from the record ``scaleout``."""
    m = record["data"]["malloc_trim"]
    ratio = median(m["runs"]["malloc_trim_65536"]) / median(m["runs"]["plain"])
    return (
        f"  dask workers set `MALLOC_TRIM_THRESHOLD_=65536`; with it, CG's test factors cost "
        f"{ratio:.2f}x the CPU of a plain process here (median of {len(m['runs']['plain'])}, "
        f"`{record['command']}`, {record['date'][:10]}).\n"
    )
