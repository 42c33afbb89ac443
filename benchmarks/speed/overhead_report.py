"""The section "Fill overhead (issue 22)" of RESULTS.md, from the record ``fill_overhead``.

:func:`render` takes the record ``benchmarks/results/fill_overhead.json`` that
``fill_overhead.py`` writes and returns the section: per case every repetition of each side,
its median and spread, and the ratios of the medians against issue 22's target (a fill of
2,000 blocks of 100 x 100 within 1.5x of writing the same chunks with plain zarr). Standard
library only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: results_md
from results_md import fmt_t, record_head, table, yes_no

SECTION = "## Fill overhead (issue 22)"
SIDES = {
    "ours_fill": "ours: `fill()`",
    "plain_zarr": "plain zarr: the same chunks written, one assignment per chunk",
    "plain_zarr_rows": "plain zarr: the same chunks written, one assignment per block row",
    "in_memory_floor": "in-memory floor: all factors once + one float32 product, no store",
}

__all__ = ["SECTION", "render"]


def side_rows(case: Mapping[str, Any]) -> list[list[str]]:
    """One row per side: median, min, max and every repetition."""
    return [
        [label, fmt_t(s["median"]), fmt_t(s["min"]), fmt_t(s["max"]),
         ", ".join(fmt_t(x) for x in s["runs"])]
        for key, label in SIDES.items()
        if (s := case.get(key))
    ]  # fmt: skip


def ratio(case: Mapping[str, Any], other: str) -> float:
    return float(case["ours_fill"]["median"] / case[other]["median"])


def render(record: Mapping[str, Any]) -> str:
    """The whole section from the record ``fill_overhead``."""
    data = record["data"]
    head = ("side", "median", "min", "max", "repetitions")
    lines = [*record_head(record), ""]
    lines.append(
        f"Side by side in one run, {data['reps']} repetitions, the order rotating each "
        "repetition; fresh local directory stores."
    )
    f = data.get("function")
    if f:
        r = ratio(f, "plain_zarr")
        (n0, n1), block = f["shape"], tuple(f["block"])
        lines += [
            "",
            f"### `from_function` with a cheap function: {f['blocks']:,} blocks {block} of a "
            f"{n0:,} x {n1:,} float32 array",
            "",
            *table(head, side_rows(f), "lrrrl"),
            "",
            f"`fill()` / plain zarr (medians): {r:.2f}x; target <= 1.5x (issue 22): "
            f"{yes_no(r <= 1.5)}."
            + (
                f" `fill()` / plain zarr writing a block row per assignment: "
                f"{ratio(f, 'plain_zarr_rows'):.2f}x (no target; `fill()` writes runs of "
                "blocks per zarr call too)."
                if "plain_zarr_rows" in f
                else ""
            ),
        ]
    m = data.get("model")
    if m:
        block = tuple(m["block"])
        lines += [
            "",
            f"### The medium case: MLP of {m['n_params']:,} parameters, {m['n_test']:,} x "
            f"{m['n_train']:,}, `DirectInfluence`, blocks {block}",
            "",
            f"`create` + `fill()` after one untimed `fit`, {m['torch_threads']} torch threads.",
            "",
            *table(head, side_rows(m), "lrrrl"),
            "",
            f"`fill()` / plain zarr (medians): {ratio(m, 'plain_zarr'):.2f}x; `fill()` / the "
            f"in-memory floor: {ratio(m, 'in_memory_floor'):.2f}x (no target; pyDVL's in-memory "
            'call is compared in the section "Speed (issue 4)").',
        ]
    return "\n".join(lines) + "\n"
