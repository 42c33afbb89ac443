"""The section "Large models (issue 9)" of RESULTS.md, rendered from the record ``large`` alone.

``render(record)`` is the renderer ``bench_large.py`` names in the record; ``summary`` and
``method_times`` give the per-method times (median and range over repetitions) that the tables
and the ratio lines use. Standard library only. Every figure comes from the record; estimates
(the EK-FAC matrix where only its first block rows ran, Kronfluence's scores where only some
query batches ran) are labelled "est." with their basis.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from results_md import record_head, table

SECTION = "## Large models (issue 9)"
KRONFLUENCE_DOC = (
    "its `DOCUMENTATION.md` (the `compute_pairwise_scores` example: "
    "`per_device_query_batch_size=1024`) and its CIFAR-10 example (`examples/cifar/analyze.py`: "
    "1000) score a whole large query batch per pass over the train data"
)


TRAK_ONCE = (
    " (one `lambda_reg` for the ensemble, the mean of the checkpoints' matched values: "
    "`finalize_features()` is called once for all checkpoints, as in its Quickstart)."
)
"""How the TRAK worker finalizes its features, where the record says so."""


def peer_configs(size: str, n_test: int, dim: int, query_batch: int) -> dict[str, dict[str, Any]]:
    """How each peer is configured at a size (the driver runs it so; the section says so)."""
    return {"kronfluence": {"query_batch": min(query_batch, n_test)}, "trak": {"proj_dim": dim}}


# ---------------------------------------------------------------------- numbers
def method_times(name: str, r: Mapping[str, Any], n_test: int) -> dict[str, Any]:
    """One run's ``fit``, ``matrix`` (seconds or None) and whether ``matrix`` is an estimate
    (``basis``: how it was estimated, else None)."""
    t = r.get("times", {})
    fit: float | None = None
    matrix: float | None = None
    basis: str | None = None
    if name == "floor":
        matrix = t.get("passes", 0.0) + t.get("product", 0.0)
    elif name == "projected":
        fit, matrix = t.get("fit"), t.get("fill")
    elif name == "ekfac":
        fit = t.get("fit")
        if "fill" in t:
            matrix = t.get("create", 0.0) + t["fill"]
        elif "second_block_row" in t:
            b = int(r["block_shape"][0])
            k = -(-n_test // b)
            matrix = t.get("create", 0.0) + t["first_block_row"] + (k - 1) * t["second_block_row"]
            basis = (
                f"first block row ({b} rows, train side computed) + {k - 1} x the second, "
                "both read through the array"
            )
    elif name == "kronfluence":
        fit = t.get("fit")
        done = sorted(int(k.split("_")[1]) for k in t if k.startswith("scores_"))
        if done:
            rows = done[-1]
            matrix = t[f"scores_{rows}"] * n_test / rows
            if rows < n_test:
                basis = f"{rows} query rows scaled linearly to {n_test}"
    elif name == "trak":
        fit, matrix = t.get("featurize"), t.get("score")
    elif name == "pydvl":
        fit = t.get("fit")
        solves = r.get("solve_rows") or []
        if solves and "products" in t:  # the time-limited worker: rows one at a time
            per_row = sum(solves) / len(solves)
            matrix = per_row * n_test + t["products"]
            basis = (
                f"CG solves of {len(solves)} test row(s), mean {fmt(per_row)} s each, x "
                f"{n_test} rows (pyDVL solves one row after another) + the one products pass "
                f"over the train data measured; CG stops at maxiter {r.get('maxiter')} (not "
                "converged), so a converged run costs more"
            )
    total = None if matrix is None else (fit or 0.0) + matrix
    return {"fit": fit, "matrix": matrix, "total": total, "basis": basis}


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median, min and max of the values that are not None (None when none is)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def summary(name: str, runs: Sequence[Mapping[str, Any]], n_test: int) -> dict[str, Any]:
    """Median and range over a method's successful runs of fit, matrix and their sum."""
    ok = [r for r in runs if "error" not in r]
    times = [method_times(name, r, n_test) for r in ok]
    out: dict[str, Any] = {k: spread([t[k] for t in times]) for k in ("fit", "matrix", "total")}
    out["basis"] = next((t["basis"] for t in times if t["basis"]), None)
    out["rss_gib"] = max(
        (r["peak_rss_mib"] / 1024 for r in ok if "peak_rss_mib" in r), default=None
    )
    out["errors"] = [r["error"] for r in runs if "error" in r]
    return out


def fmt(x: float | None) -> str:
    """Seconds with 3 significant digits up to 100, whole above."""
    if x is None:
        return "n/a"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def cell(s: dict[str, float] | None, estimate: bool = False) -> str:
    """``median [min-max]`` of a spread (one value alone when one run), ``est.`` marked."""
    if s is None:
        return "n/a"
    text = (
        fmt(s["median"]) if s["n"] == 1 else f"{fmt(s['median'])} [{fmt(s['min'])}-{fmt(s['max'])}]"
    )
    return f"{text} (est.)" if estimate else text


# ---------------------------------------------------------------------- notes per method
def shared(record: Mapping[str, Any]) -> str:
    """A sentence when the load average exceeded the cores during the run, else empty."""
    loads = [x for k in ("start", "end") for x in record["load"].get(k, [])]
    cores = float(record["machine"].get("nproc", "0") or 0)
    if not loads or not cores or max(loads) <= cores:
        return ""
    return (
        f" The machine was shared: the load average reached {max(loads):.0f} on its "
        f"{cores:.0f} cores, so every absolute time here is inflated (the methods shared the "
        "slowdown; compare ratios within this run, not with runs on a quiet machine)."
    )


def note(name: str, runs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    """What a method's row ran, from its first successful run (``|`` kept out of the table)."""
    return _note(name, runs, settings).replace("|", "/")


def _note(name: str, runs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    r = next((r for r in runs if "error" not in r), None)
    if r is None:
        return "failed: " + "; ".join(str(x["error"])[:150] for x in runs)
    t = r.get("times", {})
    if name == "floor":
        return f"fwd+bwd over all points (batch 256) + one {settings['dim']}-wide product"
    if name == "projected":
        nr = r.get("no_reuse", {})
        b = r.get("bf16") or {}
        return (
            f"width {r.get('width')}; store vs in-memory max rel. diff "
            f"{r.get('store_vs_memory', float('nan')):.1e}; in memory {fmt(t.get('memory'))}; "
            f"with_test (new test set, filled) {fmt(t.get('with_test'))} with "
            f"{r.get('with_test_train_factors')} train factor computations; "
            f"reuse_fit_gradients=False: fit {fmt(nr.get('fit'))}, fill {fmt(nr.get('fill'))}; "
            f"bf16 train factors: max rel. error {b.get('max_rel_err', float('nan')):.1e}, "
            f"Spearman vs float32 {b.get('spearman_mean', float('nan')):.4f}"
        )
    if name == "ekfac":
        how = (
            "`create(...)` + `fill()`"
            if "fill" in t
            else f"`create(...)`, reads `arr[:{r['rows']}]`, `arr[{r['rows']}:{2 * r['rows']}]`"
        )
        st = r.get("stats", {})
        return (
            f"through the array: {how}, block shape {tuple(r.get('block_shape', []))} "
            f"({block_reason(r, settings)}); factor widths {r.get('widths')}; train factor "
            f"computations {st.get('train_factors')}, blocks computed {st.get('blocks_computed')}"
        )
    if name == "kronfluence":
        return (
            f"strategy ekfac, `use_empirical_fisher=True`, `damping_factor` {settings['reg']}, "
            f"`per_device_query_batch_size` {r.get('query_batch')} ({r.get('rows')} query rows), "
            f"train batch {r.get('batch')}"
        )
    if name == "trak":
        lams = ", ".join(f"{x:.3g}" for x in r.get("lambda_reg", []))
        rel = ", ".join(f"{x:.3g}" for x in r.get("relative_damping", []))
        each = r.get("lambda_reg_per_checkpoint")
        if each:  # one finalize_features for the ensemble: one lambda_reg
            per = ", ".join(f"{x:.3g}" for x in each)
            lams += f" (the mean of the checkpoints' matched values {per})"
        return (
            f"fit = featurize + finalize_features, matrix = score; proj_dim {r.get('dim')}, "
            f"{r.get('checkpoints')} independently trained checkpoint(s), batch {r.get('batch')}; "
            f"`lambda_reg` {lams} "
            f"(our damping relative to our Fisher's mean eigenvalue: {rel})"
        )
    if name == "pydvl":
        limit = (
            f" (rows one at a time until {fmt(r['budget_s'])} s had passed, at most "
            f"{r.get('rows_wanted')})"
            if "budget_s" in r
            else ""
        )
        return (
            f"`CgInfluence` (maxiter {r.get('maxiter')}, not converged) through "
            f"`SequentialInfluenceCalculator`, {r.get('rows')} test rows x all train{limit}: "
            f"factors {fmt(t.get('solve'))} s + products {fmt(t.get('products'))} s; "
            f"`EkfacInfluence` on the CNN: {str(r.get('ekfac'))[:100]}"
        )
    return ""


def block_reason(r: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """How EK-FAC's block shape was chosen, from its run (older records: from the settings)."""
    by = r.get("block_chosen_by")
    if by == "create":
        return (
            "chosen by `create` with no `block_shape` named, as a user gets it: from the "
            f"backend's `memory_budget` ({r['memory_budget'] / (1 << 30):g} GiB) and the bytes "
            "of one sample's factors"
        )
    if by == "caller":
        return "named by the benchmark (`--ekfac-block`)"
    return "library default" if r.get("rows") == settings["n_test"] else "explicit"


def batches(value: int | Mapping[str, int]) -> str:
    """TRAK's batch as the record holds it: one number, or one per size."""
    if isinstance(value, Mapping):
        return ", ".join(f"{v} at {k}" for k, v in value.items())
    return str(value)


# ---------------------------------------------------------------------- ratios
def ratio(
    a: Mapping[str, Any], b: Mapping[str, Any], key_a: str = "total", key_b: str = "total"
) -> str:
    """``a / b`` of two methods' medians, with the range over paired repetitions when both ran
    the same number of times; ``(est.)`` when either side is an estimate."""
    sa, sb = a[key_a], b[key_b]
    if sa is None or sb is None:
        return "n/a"
    text = f"{sa['median'] / sb['median']:.2f}"
    pa, pb = a.get(f"_{key_a}_values", []), b.get(f"_{key_b}_values", [])
    if len(pa) == len(pb) > 1:
        rs = [x / y for x, y in zip(pa, pb, strict=True)]
        text += f" (paired runs {min(rs):.2f}-{max(rs):.2f})"
    if (key_a != "fit" and a.get("basis")) or (key_b != "fit" and b.get("basis")):
        text += " (est.)"
    return text


def with_values(name: str, runs: Sequence[Mapping[str, Any]], n_test: int) -> dict[str, Any]:
    """``summary`` plus each run's values (``_fit_values`` ...) for paired ratios."""
    s = summary(name, runs, n_test)
    ts = [method_times(name, r, n_test) for r in runs if "error" not in r]
    for k in ("fit", "matrix", "total"):
        s[f"_{k}_values"] = [t[k] for t in ts if t[k] is not None]
    return s


def target_lines(s: Mapping[str, Mapping[str, Any]], runs: Mapping[str, Any]) -> list[str]:
    """The issue's targets, each from the medians of this size's runs."""
    out = []
    if "projected" in s and "floor" in s:
        out.append(
            f"- ProjectedInfluence fill / floor: {ratio(s['projected'], s['floor'], 'matrix')}; "
            f"fit + fill / floor: {ratio(s['projected'], s['floor'])} (target <= 2 at 1e7)"
        )
    if "projected" in s and "kronfluence" in s:
        out.append(
            "- Kronfluence EK-FAC (fit + matrix) / ProjectedInfluence (fit + fill): "
            f"{ratio(s['kronfluence'], s['projected'])} (target >= 10 at 1e7)"
        )
    if "ekfac" in s and "kronfluence" in s:
        out.append(
            "- Kronfluence EK-FAC / EkfacInfluence (fit + matrix): "
            f"{ratio(s['kronfluence'], s['ekfac'])} (target >= 1)"
        )
    if "projected" in s and s["projected"]["rss_gib"] is not None:
        out.append(
            f"- ProjectedInfluence peak RSS: {s['projected']['rss_gib']:.2f} GiB "
            "(target < 4 GiB at 1e7)"
        )
    first = next((r for r in runs.get("projected", []) if "error" not in r), None)
    if first and "with_test" in first["times"]:
        t = first["times"]
        out.append(
            "- ProjectedInfluence with_test (new test set, filled) / (fit + first fill), first "
            f"run: {100 * t['with_test'] / (t['fit'] + t['fill']):.1f}% (target <= 10%)"
        )
    return out


# ---------------------------------------------------------------------- the section
def pydvl_limit(st: Mapping[str, Any]) -> str:
    """The time limit on pyDVL's run, where the record has one."""
    if "pydvl_budget_s" not in st:
        return ""
    return (
        f"; a time limit keeps it from eating the run: test rows are solved one at a time and "
        f"none starts after {fmt(st['pydvl_budget_s'])} s (hard timeout "
        f"{fmt(st['pydvl_timeout_s'])} s); its matrix is extrapolated from the rows done, "
        "labelled (est.)"
    )


def ladder_order(sizes: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The sizes smallest first (``"1e5"`` before ``"1e6"``), whatever order they ran in."""
    return sorted(sizes.items(), key=lambda item: float(item[0]))


def render(record: Mapping[str, Any]) -> str:
    """The whole section, from the record ``large``."""
    d = record["data"]
    st = d["settings"]
    n_test = st["n_test"]
    lines = record_head(record)
    lines += [
        "",
        f"Synthetic CIFAR-like data (3x32x32, 10 classes, 10% flipped train labels), n_train "
        f"{st['n_train']:,}, n_test {n_test:,}; projection width {st['dim']}; empirical Fisher "
        f"and absolute damping {st['reg']} for ours, Kronfluence and pyDVL; {st['threads']} "
        f"torch threads; torch {st['torch']}. Every method runs in its own process (peak RSS "
        "of that process), all in this one invocation: each repetition runs the floor and "
        "the repeated methods back to back, so ratios compare runs minutes apart under the "
        f"same load.{shared(record)} "
        "Times in seconds: the median over the repetitions with [min-max] where there were "
        f"several; {', '.join(st['once']) or 'no method'} ran once, after the repetitions. "
        '"matrix": the full n_test x n_train matrix after fit; `(est.)`: an estimate '
        "whose basis the note states (never a bound). Ratios: of medians, with the range over "
        "paired repetitions where both ran each time. Spearman: mean (min) over rows of the "
        "per-row rank correlation with our `EkfacInfluence` on the rows it computed (all "
        "per-row values in `benchmarks/results/raw/large.json.gz`).",
        "",
        "Peer settings, as their documentation recommends:",
        "",
        f"- Kronfluence 1.0.1: {KRONFLUENCE_DOC}; here "
        f"{min(st['kronfluence_query_batch'], n_test):,} (at most "
        f"{st['kronfluence_query_batch']:,}; all {n_test:,} queries in "
        f"{-(-n_test // st['kronfluence_query_batch'])} pass(es)), its `ekfac` factor "
        "strategy with "
        "`use_empirical_fisher=True` (our curvature) and `damping_factor` equal to our damping "
        "(its default, a heuristic 0.1 x the mean eigenvalue, is not the same way as ours).",
        "- TRAK 0.3.2: `proj_dim` equal to our projection width (its default is 2048); its "
        "`lambda_reg` adds to `X^T X`, a sum over the train points of projected margin "
        "gradients, whose scale is not our Fisher's: it is set so that `lambda_reg` divided by "
        "the mean eigenvalue of its `X^T X` equals our damping divided by the mean eigenvalue "
        "of our Fisher (measured in its worker), so the damping is chosen the same way for "
        f"both{TRAK_ONCE if st.get('trak_finalize_once') else '.'} "
        'TRAK\'s docs ("Quickstart") train three independent models and say that '
        "multiple checkpoints significantly improve TRAK; here "
        f"{st.get('trak_checkpoints')} independently trained models (seeds 0, 1, ...; seed 0 "
        "is the model every method explains). Its CPU projector (`BasicProjector`) draws its "
        "random matrix again for every batch, so it runs with a large batch (a batch holds its "
        f"per-sample gradients): {batches(st.get('trak_batch', {}))}.",
        "- pyDVL 0.10: its batched calculator (`SequentialInfluenceCalculator`; pyDVL's "
        "influence-function docs describe these calculators for data processed in batches): "
        "influence factors of the test rows, then influences against the train loader in "
        "batches, not `influences()` on all points in memory; `CgInfluence` with maxiter "
        f"{st['cg_maxiter']}{pydvl_limit(st)}.",
        "",
    ]
    for size, why in st.get("not_run", {}).items():
        lines += [f"Not run: {size}: {why}", ""]
    missing = [z for z in st.get("planned_sizes", []) if z not in d["sizes"]]
    if missing:
        lines += [
            f"Not run: {', '.join(missing)} (the invocation named them; it stopped or was "
            "stopped before them, so this record holds the sizes it finished).",
            "",
        ]
    for size, res in ladder_order(d["sizes"]):
        info = d["models"][size]
        runs = res["runs"]
        s = {m: with_values(m, rs, n_test) for m, rs in runs.items()}
        reps = res["repeats"]
        lines += [
            f"### {info['params']:,} parameters ({size}; test accuracy {info['test_acc']:.2f} "
            f"after {info['epochs']} epoch(s)); {reps} repetition(s)",
            "",
        ]
        if res.get("complete") is False:
            lines += [
                "The run stopped (or was stopped) before this size finished: the table holds "
                "the method runs it finished; not run: "
                f"{', '.join(res.get('not_yet_run', [])) or 'none'}.",
                "",
            ]
        rows = []
        for m, rs in runs.items():
            sm = s[m]
            sp = res["spearman"].get(m)
            rho = f"{sp['mean']:.3f} ({sp['min']:.3f}), {sp['rows']} rows" if sp else ""
            rss = "n/a" if sm["rss_gib"] is None else f"{sm['rss_gib']:.2f} GiB"
            est = sm["basis"] is not None
            n = f"{len(rs) - len(sm['errors'])}/{len(rs)}"
            extra = f"; estimate: {sm['basis']}" if est else ""
            rows.append(
                [
                    m,
                    n,
                    cell(sm["fit"]),
                    cell(sm["matrix"], est),
                    cell(sm["total"], est),
                    rss,
                    rho,
                    note(m, rs, st) + extra,
                ]
            )
        lines += table(
            ["method", "runs ok", "fit", "matrix", "fit + matrix", "peak RSS", "Spearman", "note"],
            rows,
        )
        lines += ["", *target_lines(s, runs), ""]
    return "\n".join(lines)


def readme(record: Mapping[str, Any]) -> str:
    """A short table for README.md (a marked block ``<!-- render large
    large/large_report.py:readme -->``): per size, the median fit + matrix of each method."""
    d = record["data"]
    n_test = d["settings"]["n_test"]
    names = [
        m
        for m in ("floor", "projected", "ekfac", "kronfluence", "trak")
        if any(m in res["runs"] for res in d["sizes"].values())
    ]
    label = {
        "floor": "floor",
        "projected": "ProjectedInfluence",
        "ekfac": "EkfacInfluence",
        "kronfluence": "Kronfluence EK-FAC",
        "trak": "TRAK",
    }
    rows = []
    for size, res in ladder_order(d["sizes"]):
        cells = []
        for m in names:
            rs = res["runs"].get(m)
            if not rs:
                cells.append("")
                continue
            sm = summary(m, rs, n_test)
            cells.append(cell(sm["total"], sm["basis"] is not None))
        rows.append([f"{d['models'][size]['params']:,}", *cells])
    st = d["settings"]
    head = [
        f"Fit + full matrix in seconds (median [min-max] over repetitions; `(est.)`: estimated, "
        f"see the section) for {st['n_train']:,} train x {n_test:,} test points, "
        f"{st['threads']} CPU threads, from `benchmarks/results/{record['name']}.json` "
        f'({record["date"][:10]}; section "{record["section"][3:]}" of '
        "`benchmarks/RESULTS.md`):",
        "",
    ]
    return "\n".join(head + table(["parameters", *(label[m] for m in names)], rows))
