"""The section "Speed (issue 4)" of RESULTS.md, from the record ``benchmarks/results/speed.json``.

:func:`render` takes the record ``bench_speed.py`` writes (``results_md.save_result``) and
returns the section: one table (case, ours, theirs or floor, ratio = theirs / ours, target,
met), one note per case and the targets, every figure from the record's ``data`` (the workers'
raw timings, kept as they wrote them). Each case has a ``*_part`` function that returns its rows
and its note; a case missing from the results is left out, a case that failed shows its error.
:func:`readme` gives README's Performance paragraph from the same record. Standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import median
from results_md import fmt_mb, fmt_t, record_head, table, yes_no

SECTION = "## Speed (issue 4)"
Part = tuple[list[list[str]], list[str]]

__all__ = ["SECTION", "readme", "render"]


def spread(xs: Sequence[float]) -> str:
    """``median (min-max, n)`` of repeated timings."""
    return f"{fmt_t(median(xs))} ({fmt_t(min(xs))}-{fmt_t(max(xs))}, n={len(xs)})"


def one_rhs(t: Mapping[str, Any]) -> tuple[float, bool, str]:
    """pyDVL's one-right-hand-side CG: (time for all pairs, extrapolated?, how it was had)."""
    pairs, n_pairs, measured = t["seq_one_pairs"], t["seq_one_all_pairs"], t["seq_one_measured"]
    if pairs >= n_pairs:
        return measured, False, f"measured on all {n_pairs} (test batch, train batch) pairs"
    how = (
        f"extrapolated: {fmt_t(measured)} measured on {pairs} of {n_pairs} (test batch, train "
        f"batch) pairs, times {n_pairs / pairs:g}"
    )
    return measured * n_pairs / pairs, True, how


def tol_text(settings: Mapping[str, Any]) -> str:
    tol = settings["cg_tol"]
    return (
        f"rtol={tol['rtol']:g}, atol={tol['atol']:g}, maxiter={tol['maxiter']} on both sides "
        "(the documented defaults of `CgInfluence`, pyDVL 0.10's and ours, with pyDVL's stopping "
        "rule `||r|| < max(rtol**2 ||g||, atol**2)`; maxiter None is 10 x n_params)"
    )


def row(case: str, ours: float, theirs: float, target: str, met: bool | None, what: str) -> list:
    ratio = theirs / ours if ours > 0 else float("nan")
    return [case, fmt_t(ours), f"{fmt_t(theirs)} ({what})", f"{ratio:.2f}x", target, yes_no(met)]


# ---------------------------------------------------------------------- small
def small_note(small: dict[str, Any], blk: str, tot: list[float], tol: str) -> str:
    o, t = small["ours"], small["theirs"]
    lo, hi = o.get("h_eig", ("?", "?"))
    if "seq_one_pairs" in t:
        seconds, _, how = one_rhs(t)
        one = f", sequential one rhs at a time {fmt_t(seconds)} (once; {how})"
    else:
        one = " (one rhs at a time: skipped)"
    # records before the fix of issue 22 ran ours one CG per right-hand side
    both = o.get("solve_simultaneously", False)
    ours_cg = f" (solve_simultaneously={both})"
    vs_one = f", vs one-at-a-time {small['rel_seq_one']:.2e}" if "rel_seq_one" in small else ""
    return (
        f"**small** (MLP 20 -> 32 -> 3, {o['n_params']} params, train/test accuracy "
        f"{o['acc'][0]:.2f}/{o['acc'][1]:.2f}; {o['n_train']} train, {o['n_test']} test, "
        f"loaders of batch {o['batch']}, regularization {o['reg']}; eigenvalues of H in "
        f"[{lo:.3g}, {hi:.3g}]; CG with {tol}; {small['reps']} rounds): ours fit + create + "
        f"fill {spread(tot)}{ours_cg}; pyDVL fit {spread(t['fit'])} (not counted on their side), "
        f"in-memory {spread(t['inmem'])} (solve_simultaneously=True), sequential simultaneous "
        f"{spread(t['seq'])}{one}. Our factor computations {o.get('stats')}; our CG iterations "
        f"(last call) {o.get('cg_iters_last_call')}. With our backend, all test factors in one "
        f"call take {fmt_t(o['piece_test_factors'])}, all train factors "
        f"{fmt_t(o['piece_train_factors'])}, the product {fmt_t(o['piece_product_f32'])} "
        f"(float64: {fmt_t(o['piece_product_f64'])}). Max relative difference (max|ours - "
        f"theirs| / max|theirs|): vs in-memory {small['rel_inmem']:.2e}, vs sequential "
        f"simultaneous {small['rel_seq']:.2e}{vs_one}; pyDVL's sequential vs its in-memory "
        f"{small['rel_theirs_seq_vs_inmem']:.2e}."
        + (f" Our warnings: {o['warnings']}." if o["warnings"] else "")
        + (f" pyDVL warnings: {t['warnings']}." if t["warnings"] else "")
    )


def small_part(small: dict[str, Any], tol: str) -> Part:
    if "error" in small:
        return [], [f"**small**: {small['error']}"]
    o, t = small["ours"], small["theirs"]
    blk = str(tuple(o["blocks"][0]))
    tot = [a + b for a, b in zip(o["fit"], o["fill"][blk], strict=True)]
    ours = median(tot)
    name = (
        f"small CG (reg {o['reg']}), {o['n_test']} x {o['n_train']}, "
        f"{o['n_params']} params, blocks {blk}: fit + create + fill"
    )
    rows = []
    if "seq_one_pairs" in t:
        t1, extrapolated, _ = one_rhs(t)
        what = "seq CG one rhs, **extrapolated**" if extrapolated else "seq CG one rhs"
        rows.append(row(name, ours, t1, ">= 100x", t1 / ours >= 100, what))
    ts, ti = median(t["seq"]), median(t["inmem"])
    rows.append(row(name, ours, ts, ">= 5x", ts / ours >= 5, "seq CG simult."))
    rows.append(row(name, ours, ti, ">= 1/1.5x", ti / ours >= 1 / 1.5, "in-memory call"))
    return rows, [small_note(small, blk, tot, tol)]


# ---------------------------------------------------------------------- medium
NO_SEQ = (
    "its sequential calculator not run in this invocation (`--skip-medium-seq`: about 37 min "
    "on 2 shared cores)"
)


def medium_note(medium: dict[str, Any]) -> str:
    o, t = medium["ours"], medium["theirs"]
    by_block = "; ".join(f"{b} {spread(v)}" for b, v in o["fill"].items())
    seq = f"sequential {spread(t['seq'])}" if t["seq"] else NO_SEQ
    vs_seq = f", vs sequential {medium['rel_seq']:.2e}" if "rel_seq" in medium else ""
    return (
        f"**medium** (MLP 20 -> 64 -> 3, {o['n_params']} params, train/test accuracy "
        f"{o['acc'][0]:.2f}/{o['acc'][1]:.2f}; {o['n_train']} train, {o['n_test']} test, "
        f"loaders of batch {o['batch']}, DirectInfluence, regularization {o['reg']}; "
        f"{medium['reps']} rounds, side by side (process order {', '.join(medium['order'])}), "
        f"pyDVL's sequential calculator in the first round only): ours fit {spread(o['fit'])}, "
        f"pyDVL fit {spread(t['fit'])}, pyDVL in-memory {spread(t['inmem'])}, {seq}. Our "
        f"create + fill by block shape: {by_block}. Our factor "
        f"computations ((256, 4096)): {o.get('stats')}. The pieces, with our backend: all test "
        f"factors {fmt_t(o['piece_test_factors'])}, all train factors "
        f"{fmt_t(o['piece_train_factors'])}, one float32 product "
        f"{fmt_t(o['piece_product_f32'])}, one float64 product "
        f"{fmt_t(o['piece_product_f64'])}. Max relative difference of values: vs in-memory "
        f"{medium['rel_inmem']:.2e}{vs_seq}."
    )


def medium_part(medium: dict[str, Any]) -> Part:
    if "error" in medium:
        return [], [f"**medium**: {medium['error']}"]
    o, t = medium["ours"], medium["theirs"]
    fit, pfit = median(o["fit"]), median(t["fit"])
    tseq, tin = (median(t["seq"]) if t["seq"] else None), median(t["inmem"])
    rows = []
    for b in o["blocks"]:
        fl = median(o["fill"][str(tuple(b))])
        name = (
            f"medium Direct, {o['n_test']} x {o['n_train']}, {o['n_params']} params, "
            f"blocks {tuple(b)}: create + fill (fit apart)"
        )
        if tseq is not None:
            rows.append(row(name, fl, tseq, ">= 40x", tseq / fl >= 40, "sequential"))
        rows.append(row(name, fl, tin, ">= 1/2x", tin / fl >= 0.5, "in-memory call"))
    rows.append(row("medium Direct: `fit`", fit, pfit, ">= 1x", pfit / fit >= 1, "pyDVL fit"))
    best = min(median(v) for v in o["fill"].values())
    name = "medium Direct, best block shape: fit + create + fill"
    rows.append(row(name, fit + best, pfit + tin, "(info)", None, "pyDVL fit + in-memory"))
    return rows, [medium_note(medium)]


# ---------------------------------------------------------------------- floor
def floor_part(floor: dict[str, Any]) -> Part:
    if "error" in floor:
        return [], [f"**floor**: {floor['error']}"]
    total = floor["floor_test_factors"] + floor["floor_train_factors"]
    total += floor["floor_product_f32"]
    name = (
        f"floor CG, {floor['n_test']} x {floor['n_train']}, {floor['n_params']} params, "
        f"blocks {tuple(floor['block'])}: fill"
    )
    met = total / floor["fill"] >= 1 / 1.3
    note = (
        f"**floor** (MLP {floor['arch']}, {floor['n_params']} params, train/test accuracy "
        f"{floor['acc'][0]:.2f}/{floor['acc'][1]:.2f}; CgInfluence {floor['settings']}, "
        f"fitted on a seeded subsample of {floor['n_fit']} train points; once each, same "
        f"process, floor first): floor = all test factors "
        f"{fmt_t(floor['floor_test_factors'])} (one call, {floor['floor_cg_iters']} CG "
        f"iterations) + all train factors {fmt_t(floor['floor_train_factors'])} + one "
        f"float32 product {fmt_t(floor['floor_product_f32'])} = {fmt_t(total)}; fill "
        f"{fmt_t(floor['fill'])}; factor computations {floor.get('stats')}; the same "
        f"product in float64 takes {fmt_t(floor['product_f64'])}. Fill vs floor values: max "
        f"relative difference {floor['rel_fill_vs_floor']:.2e}."
        + (f" Warnings: {floor['warnings']}." if floor.get("warnings") else "")
    )
    return [row(name, floor["fill"], total, ">= 1/1.3x", met, "floor")], [note]


# ---------------------------------------------------------------------- memory
MEMORY_STEPS = (
    ("fill", "fill()"),
    ("row", "full-row read `arr[12345]`"),
    ("slice", "`np.asarray(arr[1000:2000])`"),
)


def memory_part(mem: dict[str, Any]) -> Part:
    f = mem["fill"]
    if "error" in f:
        return [], [f"**memory**: {f['error']}"]
    shp = f"{f['shape'][0]:,} x {f['shape'][1]:,}"
    rows = []
    for step, label in MEMORY_STEPS:
        r = mem[step]
        if "error" in r:
            rows.append([f"memory {label}", r["error"], "", "", "", ""])
            continue
        target, met = ("< 1 GiB", r["delta"] < 2**30) if step == "fill" else ("(info)", None)
        name = f"memory, {shp} float32 `from_function`, {label}: peak RSS over baseline"
        rows.append(
            [name, fmt_mb(r["delta"]), f"(time {fmt_t(r['seconds'])})", "", target, yes_no(met)]
        )
    note = (
        f"**memory**: {shp} float32 ({f['raw'] / 4:.1e} entries: {f['raw'] / 1e9:.1f} GB "
        f"dense), blocks {tuple(f['block'])}, block function: seeded standard normal x 1e-3 per "
        f"block (numpy Generator); fill wrote {f['blocks']} blocks, {f['stored'] / 1e9:.2f} GB "
        f"stored, in {fmt_t(f['seconds'])}. Each step in a fresh process; peak RSS sampled "
        "every 2 ms (psutil) and from `ru_maxrss`, minus the RSS just before the step "
        f"(baselines: fill {fmt_mb(f['baseline'])}, row {fmt_mb(mem['row'].get('baseline', 0))}"
        f", slice {fmt_mb(mem['slice'].get('baseline', 0))}). The 1,000-row slice's result is "
        f"itself {fmt_mb(mem['slice'].get('out_bytes', 0))}."
    )
    return rows, [note]


# ---------------------------------------------------------------------- reads
READS_NOTE = (
    "`ia.open(path)` against `zarr.open_array(path + '/influence')`, interleaved, medians; the "
    "rows with a `>= 1/1.3x` or `>= 1/1.5x` target are measured with the block cache off "
    "(`arr.block_cache.max_bytes = 0`: every read decodes its chunks, as plain zarr does), the "
    "'block cache on' rows are the same reads repeated on a freshly opened array with the "
    "default cache (the first repetition fills it; reads of more than 8 blocks that are not all "
    "cached bypass it). First vs repeated read: each key on its own fresh store (deleted and "
    "re-created) with a fresh factor memo and an empty block cache (the first read computes its "
    "factors and blocks and writes them; blocks computed = `arr.stats.blocks_computed` after it; "
    "repeated reads checked to compute none), repeated read median of 9, served by the block "
    "cache (computed blocks are cached as they are written); then, with the cache off, median "
    "of 9 decoding reads."
)


def reads_part(reads: dict[str, Any]) -> Part:
    if "error" in reads:
        return [], [f"**reads**: {reads['error']}"]
    shape = f"{reads['n_test']} x {reads['n_train']}"
    rows = []
    for c in reads["cached"]:
        t = c["target"]
        met = None if t is None else c["ia"] / c["zarr"] <= t
        name = f"cached read, model-backed {shape}: {c['case']}"
        target = "(info)" if t is None else f">= 1/{t}x"
        rows.append(row(name, c["ia"], c["zarr"], target, met, "plain zarr"))
    for c in reads.get("cache_on", []):
        name = (
            f"repeated read, block cache on ({c['max_bytes'] >> 20} MiB), model-backed "
            f"{shape}: {c['case']}"
        )
        rows.append(row(name, c["ia"], c["zarr"], "(info)", None, "plain zarr"))
    for c in reads["first"]:
        name = (
            f"repeated vs first read {c['key']} ({c['blocks']} blocks computed first, fresh store)"
        )
        met = c["first"] / c["again"] >= 100
        rows.append(row(name, c["again"], c["first"], ">= 100x", met, "first read"))
        if "again_nocache" in c:
            name = f"repeated (block cache off: decode) vs first read {c['key']}"
            rows.append(row(name, c["again_nocache"], c["first"], "(info)", None, "first read"))
    note = (
        f"**reads**: a DirectInfluence store (the medium model, {reads['n_test']} test x "
        f"{reads['n_train']} train, blocks {tuple(reads['block'])}), filled, then " + READS_NOTE
    )
    return rows, [note]


# ---------------------------------------------------------------------- the section
def targets(res: Mapping[str, Any]) -> list[str]:
    """The issue's medium-case targets, with each side's spread, at blocks (100, 100) and at
    the speed benchmark's reported shape (256, 4096)."""
    m = res.get("medium")
    if not m or "error" in m:
        return []
    o, t = m["ours"], m["theirs"]
    inmem, seq = t["inmem"], t["seq"]
    lines = ["", "### Targets for the medium case", ""]
    for block in ("(100, 100)", "(256, 4096)"):
        fill = o["fill"].get(block)
        if not fill:
            continue
        r_in = median(inmem) / median(fill)
        lines.append(
            f"- Blocks {block}, within 2x of pyDVL's in-memory call (issue 22), side by side in "
            f"one run: ours create + fill {spread(fill)} against pyDVL's in-memory call "
            f"{spread(inmem)}: ratio of medians {r_in:.2f}x, so ours takes {1 / r_in:.1f}x its "
            f"time (ratio of minima {min(inmem) / min(fill):.2f}x, of maxima "
            f"{max(inmem) / max(fill):.2f}x); target >= 0.5x: {yes_no(r_in >= 0.5)}."
        )
        if seq:
            r_seq = median(seq) / median(fill)
            lines.append(
                f"- Blocks {block}, at least 40x faster than pyDVL's sequential calculator "
                f"(issue 4): {r_seq:.1f}x (its sequential run once, {fmt_t(median(seq))}): "
                f"{yes_no(r_seq >= 40)}."
            )
    if not seq:
        lines.append(f"- Against pyDVL's sequential calculator: not measured; {NO_SEQ}.")
    return lines


def render(record: Mapping[str, Any]) -> str:
    """The whole section from the record ``speed``."""
    res = record["data"]
    tol = tol_text(res["settings"])
    rows: list[list[str]] = []
    notes: list[str] = []
    parts: list[tuple[str, Any]] = [
        (k, partial(small_part, tol=tol)) for k in sorted(res) if k.startswith("small")
    ]
    parts += [("medium", medium_part), ("floor", floor_part), ("memory", memory_part)]
    parts += [("reads", reads_part)]
    for key, part in parts:
        if res.get(key):
            case_rows, case_notes = part(res[key])
            rows += case_rows
            notes += case_notes
    lines = record_head(record)
    lines += [
        "",
        "Each case runs in fresh processes: ours in the project's environment, pyDVL in "
        "`.venv-pydvl` (numpy<2), on the same seeded model (parameter hashes checked equal) and "
        "data, float32; the small and medium cases alternate one process of each side per "
        "round. The machine is shared (see the load above): compare the ratios, not the "
        "absolute times.",
        "",
        "Ratio = theirs (or floor) / ours: above 1 means ours is faster. Times are medians of "
        "the rounds stated; **extrapolated** marks a time scaled from part of a run.",
        "",
        *table(HEADER, rows, align="lrrrll"),
        "",
        *(f"- {n}" for n in notes),
        *targets(res),
        "",
        "Settings: the small case's regularization is above minus the most negative eigenvalue "
        "of H (shown in its note), so `H + lambda Id` is positive definite and CG converges on "
        "both sides."
        + (
            " The floor case fits CG's Hessian on a seeded subsample of the train points (shown "
            "in its note); matrix shape, parameter count and block shape are issue 4's, and "
            "floor and fill do the same solves."
            if "floor" in res
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


HEADER: Sequence[str] = ("case", "ours", "theirs / floor", "ratio", "target", "met")


def readme(record: Mapping[str, Any]) -> str:
    """README's Performance figures, from the record ``speed``."""
    res = record["data"]
    load = "/".join(f"{x:.0f}" for x in record["load"]["start"][:1] + record["load"]["end"][:1])
    out = [
        f"Measured side by side on 2 shared cores (`{record['command']}`, {record['date'][:10]}, "
        f"load average {load} at start/end):"
    ]
    small = next((res[k] for k in sorted(res) if k.startswith("small")), None)
    if small and "error" not in small:
        o, t = small["ours"], small["theirs"]
        blk = str(tuple(o["blocks"][0]))
        ours = median([a + b for a, b in zip(o["fit"], o["fill"][blk], strict=True)])
        text = (
            f"filling a {o['n_test']} x {o['n_train']} CG store (fit included) took "
            f"{fmt_t(ours)}, {median(t['seq']) / ours:.0f}x faster than pyDVL's sequential "
            f"calculator solving all right-hand sides at once and "
            f"{median(t['inmem']) / ours:.2f}x its single in-memory call"
        )
        if "seq_one_pairs" in t:
            t1, extrapolated, how = one_rhs(t)
            label = f" ({how})" if extrapolated else ""
            text += f"; against its one-right-hand-side-at-a-time CG {t1 / ours:,.0f}x{label}"
        out.append(f"- {text}.")
    m = res.get("medium")
    if m and "error" not in m:
        o, t = m["ours"], m["theirs"]
        inmem = median(t["inmem"])
        seq = median(t["seq"]) if t["seq"] else None

        def against(v: Sequence[float]) -> str:
            faster = (
                f"{seq / median(v):.0f}x faster than pyDVL's sequential calculator and "
                if seq is not None
                else ""
            )
            return f"{faster}{median(v) / inmem:.1f}x the time of its in-memory call"

        shapes = "; ".join(
            f"blocks {b}: {fmt_t(median(v))}, {against(v)}"
            for b, v in o["fill"].items()
            if b in ("(100, 100)", "(256, 4096)")
        )
        out.append(
            f"- a {o['n_test']:,} x {o['n_train']:,} `DirectInfluence` store "
            f"({o['n_params']:,} parameters; create + fill, fit apart): {shapes} (medians of "
            f"{m['reps']} rounds; pyDVL's in-memory call {fmt_t(inmem)})."
        )
    f = res.get("floor")
    if f and "error" not in f:
        floor = f["floor_test_factors"] + f["floor_train_factors"] + f["floor_product_f32"]
        out.append(
            f"- a fill computes each test and train factor once per tile: {f['fill'] / floor:.2f}x "
            "the floor (all factors once plus one product) on a CG case of "
            f"{f['n_params']:,} parameters."
        )
    return "\n".join(out) + "\n"
