"""The section "Language models (issue 24)" of RESULTS.md, from the record ``lm.json``.

:func:`render` takes the record that ``bench_lm.py`` saved and returns the markdown: the setup,
one table of methods (width, covered parameters, time, train tokens per second, peak RSS, LDS,
planted duplicates), the targets (met or not), the coverage of the GPT-2, Llama and GPT-NeoX
configs, and each failure's exact error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: results_md
from results_md import fmt_mb, fmt_t, record_head, table, yes_no

LABELS = {
    "ekfac": "ours: `EkfacInfluence`",
    "projected": "ours: `ProjectedInfluence`",
    "projected_mmap32": "ours: `ProjectedInfluence`, `MALLOC_MMAP_THRESHOLD_=32 MiB`",
    "bergson": "bergson (gradient store + FAISS)",
    "kronfluence": "Kronfluence 1.0.1 (EK-FAC)",
    "dattri": "dattri (projected IF)",
}
OURS = ("ekfac", "projected")
VARIANT = "projected_mmap32"
"""Ours with glibc's mmap threshold at 32 MiB (not the default; no target counts it)."""


def seconds(m: Mapping[str, Any]) -> float:
    """Fit plus the whole matrix (every timed phase of the worker)."""
    return float(sum(m["times"].values()))


def throughput(m: Mapping[str, Any], tokens: int) -> float:
    return tokens / seconds(m)


def method_row(name: str, m: Mapping[str, Any], tokens: int) -> list[str]:
    if "error" in m:
        return [LABELS[name], "", "", "", "", "", "", "", "", "failed (below)"]
    width = f"{m['width']:,}" if m.get("width") else "full"
    covered = f"{m['covered']:.1%}" if m.get("covered") is not None else "?"
    lds = f"{m['lds']:.3f} ± {m['lds_std']:.3f}" if "lds" in m else "n/a"
    shifted = (
        f"{m['lds_shift_removed']:.3f} ± {m['lds_shift_removed_std']:.3f}"
        if "lds_shift_removed_std" in m
        else "n/a"
    )
    ranks = m.get("duplicate_ranks", [])
    dup = f"{sum(r == 1 for r in ranks)}/{len(ranks)} (ranks {', '.join(map(str, ranks))})"
    return [
        LABELS[name],
        width,
        covered,
        fmt_t(m["times"]["fit"]),
        fmt_t(seconds(m)),
        f"{throughput(m, tokens):,.0f}",
        fmt_mb(m["peak_rss"]),
        lds,
        shifted,
        dup,
    ]


def faster(
    ours: str, peers: tuple[str, ...], ok: Mapping[str, Any], tokens: int, what: str
) -> list[str] | None:
    """The speed target's row: ``ours`` against the fastest of ``peers`` that ran."""
    ran = [k for k in peers if k in ok]
    if ours not in ok or not ran:
        return None
    best = max(ran, key=lambda k: throughput(ok[k], tokens))
    a, b = throughput(ok[ours], tokens), throughput(ok[best], tokens)
    measured = f"{LABELS[ours]} {a:,.0f} tok/s vs {LABELS[best]} {b:,.0f} tok/s ({b / a:.2f}x)"
    return [f"ours at least as fast as the fastest peer, {what}", measured, yes_no(a >= b)]


def targets(
    methods: Mapping[str, Any],
    tokens: int,
    coverage: Mapping[str, Any],
    gap: Mapping[str, Any] | None = None,
) -> list[str]:
    ok = {k: m for k, m in methods.items() if "error" not in m and k != VARIANT}
    rows = [
        faster("projected", ("bergson", "dattri"), ok, tokens, "projected (equal width)"),
        faster("ekfac", ("kronfluence",), ok, tokens, "unprojected EK-FAC"),
    ]
    with_lds = [k for k in ok if "lds" in ok[k]]
    if any(k in OURS for k in with_lds) and any(k not in OURS for k in with_lds):
        lo = max((k for k in with_lds if k in OURS), key=lambda k: ok[k]["lds"])
        hi = max((k for k in with_lds if k not in OURS), key=lambda k: ok[k]["lds"])
        x, y = ok[lo]["lds"], ok[hi]["lds"]
        paired = (
            f"; difference {gap['gap']:+.3f} ± {gap['gap_std']:.3f} (paired bootstrap)"
            if gap
            else ""
        )
        met = yes_no(x >= y - 0.02)
        if no_lds_signal(ok):
            met = "**vacuous**: every LDS is within its ± of 0 (see above)"
        rows.append(
            [
                "ours within 0.02 LDS of the best peer, or better",
                f"{LABELS[lo]} {x:.3f} vs {LABELS[hi]} {y:.3f}{paired}",
                met,
            ]
        )
    fractions = [
        v["fraction"] for c in coverage.values() for k, v in c.items() if isinstance(v, dict)
    ]
    rows.append(
        [
            "every trainable parameter covered (GPT-2, Llama, GPT-NeoX; both backends)",
            f"lowest {min(fractions):.1%}",
            yes_no(min(fractions) >= 1.0),
        ]
    )
    return table(["target", "measured", "met"], [r for r in rows if r is not None])


def repeats(d: Mapping[str, Any]) -> str:
    s = d["settings"]
    n = d.get("rounds_run", s.get("repeats", 1))
    why = []
    if n < s.get("repeats", 1):
        why.append(
            f"{s['repeats']} asked; round {n + 1} would have ended past the run's time limit "
            f"(`--time-limit {s['time_limit']:g}` min)"
        )
    if n < 3 and s.get("repeats_reason"):
        why.append(s["repeats_reason"])
    note = f" ({'; '.join(why)})" if why else ""
    if n <= 1:
        return f"one run each{note}"
    return f"the median of {n} runs of each method, round-robin (the matrix: the first run's){note}"


def beside(d: Mapping[str, Any]) -> str:
    """Where the retrainings ran: a second process beside the timed runs, an earlier run."""
    r = d["retrained"]
    out = ""
    if r.get("cached"):
        out += (
            f"; {r['cached']} of them from the cache of earlier runs of the driver with the "
            "same settings (`--retrain-helper` runs, or a run cut short; same models, subsets "
            "and training code)"
        )
    if r.get("helper_minutes") is not None:
        out += (
            f"; {r['by_helper']} of them by a second process of the driver, beside the "
            f"methods' timed runs, in the first {r['helper_minutes']:.0f} min of the run "
            "(`--retrain-beside`; the load averages above include it)"
        )
    return out


def damping(s: Mapping[str, Any]) -> str:
    """How the preconditioned methods were damped (records before the rule: absolute)."""
    if "damping" not in s:
        reg = s["regularization"]
        return f"Damping: ours an absolute regularization of {reg}, peers as noted below."
    return (
        f"Damping, the same rule for every preconditioned method: each layer's curvature "
        f"plus {s['damping']} x its mean eigenvalue (Kronfluence's heuristic; ours "
        "`relative_regularization=True`; dattri's `damping`); bergson runs without a "
        "preconditioner."
    )


def training(d: Mapping[str, Any]) -> str:
    """How the model was trained, on which sequences, and its losses."""
    s, model = d["settings"], d["model"]
    data = (
        f"{s['n_train']:,} train sequences of {d['tokens_per_sequence']} byte tokens of the "
        "standard library's `.py` sources"
    )
    fit = f"AdamW, one-cycle lr {s['lr']}, batch {s['batch']}"
    losses = (
        f"Loss per token: train {model['train_loss_per_token']:.3f}, queries "
        f"{model['query_loss_per_token']:.3f} nats"
    )
    if not s.get("pretrain"):  # records before the pretrained start
        return (
            f"random init, trained here for {s['epochs']} epoch(s) ({fit}) on {data} (first "
            f"files in sorted order); {s['n_test']} query sequences from later files, "
            f"{s['dups']} of them planted in the train set. {losses}"
        )
    return (
        f"pretrained here from a random init on {s['pretrain']:,} sequences of later files "
        f"({s['pretrain_epochs']} epoch(s), one-cycle lr {s['pretrain_lr']}; "
        f"{fmt_t(model['pretrain_seconds'])}; query loss then "
        f"{model['pretrained_query_loss_per_token']:.3f} nats per token), then trained from "
        f"there for {s['epochs']} epoch(s) ({fit}) on {data} (the first files in sorted "
        f"order); {s['n_test']} query sequences drawn at random among the same files' "
        "sequences (a query's neighbours in its file are train sequences), "
        f"{s['dups']} of them planted in the train set. {losses}"
    )


def retrained_how(s: Mapping[str, Any]) -> str:
    """How each retraining was trained."""
    if not s.get("pretrain"):
        return "same init and schedule, seeded order"
    return (
        "each trained as the base model: from the same pretrained start, same schedule, the "
        "full training's order less the left-out sequences"
    )


def sizing(d: Mapping[str, Any]) -> str:
    """What was run against what issue 24 asks, with the machine's training speed."""
    s, model = d["settings"], d["model"]
    tokens = s["n_train"] * d["tokens_per_sequence"] * s["epochs"]
    models = d["retrained"]["models"]
    each = d["retrained"]["seconds_each"]
    each_s = f", {fmt_t(each)} each" if each else ""
    fewer = ""
    if models < min(30, s["retrainings"]):
        fewer = (
            f" **Only {models} retrained models** (fewer than the 30 asked): the run stopped "
            "starting retrainings at its time limit."
        )
    elif models < 30:
        fewer = f" **Only {models} retrained models**: the run asked for {s['retrainings']}."
    speed = (
        f"training ran at {tokens / model['train_seconds']:,.0f} tokens/s "
        f"({fmt_t(model['train_seconds'])} for the base model) and every retraining costs "
        f"{s['subset_fraction']:.0%} of that{each_s}"
    )
    if s["n_train"] < 10_000:  # records of runs cut below the size asked
        return (
            f"Sizes: issue 24 asks for about 1e6 parameters, 10,000 train sequences and 30-50 "
            f"retrainings; this run has {model['parameters']:,} parameters and "
            f"{s['n_train']:,} train sequences, because on this machine (2 cores shared with "
            f"the other sessions' runs; load above) {speed}.{fewer}"
        )
    return (
        f"Sizes: issue 24 asks for 1e6-1e7 parameters, 10,000-50,000 train sequences, "
        f"100-1,000 queries and 30-50 retrainings; this run has {s['n_train']:,} train "
        f"sequences, {s['n_test']} queries and {models} retrained models, and "
        f"{model['parameters']:,} parameters (below the range asked: every method's time and "
        f"every retraining grow with the width, and the whole run had to fit its share of "
        f"this 2-core machine). With {s['threads']} torch thread(s) in the driver, {speed}.{fewer}"
    )


def coverage_table(coverage: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, c in coverage.items():
        cells = [name, f"{c['parameters']:,}"]
        for backend in ("EkfacInfluence", "ProjectedInfluence"):
            v = c[backend]
            cells.append(f"{v['fraction']:.1%}" + (" (warned)" if v["warnings"] else ""))
        rows.append(cells)
    header = ["config", "trainable parameters", "`EkfacInfluence`", "`ProjectedInfluence`"]
    return table(header, rows, align="lrrr")


def render(record: Mapping[str, Any]) -> str:
    d = record["data"]
    s, model = d["settings"], d["model"]
    tokens = s["n_train"] * d["tokens_per_sequence"]
    # the record's keys are sorted (JSON): show the methods in a fixed order, ours first
    methods = {k: d["methods"][k] for k in LABELS if k in d["methods"]}
    lines = record_head(record)
    cfg = model["config"]
    lines += [
        "",
        f"Model: GPT-2 config from `transformers` ({cfg['n_layer']} layers, width "
        f"{cfg['n_embd']}, {cfg['n_head']} heads, byte vocabulary {cfg['vocab_size']}, "
        f"tied embedding/output; {model['parameters']:,} parameters), {training(d)}. Every "
        "method computes the whole "
        f"({s['n_test']} x {s['n_train']:,}) matrix in its own process (its own venv), "
        f"{s['threads']} thread(s); time = fit + the matrix (ours: `fit`, then "
        "`ia.InfluenceArray.create(...)` + `fill()` + a full read), "
        f"{repeats(d)}; train tokens/s = "
        f"{tokens:,} train tokens / that time. {damping(s)} Ours: empirical Fisher, batch "
        f"{s['method_batch']}; projected width {s['projection_dim']} for ours, bergson and "
        "dattri.",
        "",
        f"LDS: {d['retrained']['models']} models retrained on random "
        f"{s['subset_fraction']:.0%} subsets of the train sequences ({retrained_how(s)}"
        f"{beside(d)}); output = minus the query's summed loss; ± = bootstrap "
        "spread over the subsets. Duplicates: how many planted duplicates rank first in their "
        "query's row (and each one's rank).",
        "",
        sizing(d),
        "",
    ]
    header = [
        "method",
        "width",
        "covered params",
        "fit",
        "fit + matrix",
        "train tok/s",
        "peak RSS",
        "LDS",
        "LDS, model shift out",
        "duplicate first",
    ]
    rows = [method_row(k, m, tokens) for k, m in methods.items()]
    lines += table(header, rows, align="llrrrrrrrl")
    lines += lds_caveat(methods)
    lines += shift_note(d["retrained"])
    lines += variant_note(methods, tokens)
    lines += beside_note(d, methods)
    lines += ["", "Targets:", "", *targets(methods, tokens, d["coverage"], d.get("lds_gap"))]
    lines += ["", "Coverage of the trainable parameters (small configs, random tokens):", ""]
    lines += coverage_table(d["coverage"])
    lines += ["", *notes(methods)]
    return "\n".join(lines) + "\n"


def no_lds_signal(methods: Mapping[str, Any]) -> bool:
    """Whether every method's LDS is within its bootstrap spread of zero."""
    scored = [m for m in methods.values() if "lds" in m and "error" not in m]
    return bool(scored) and all(abs(m["lds"]) <= m["lds_std"] for m in scored)


def lds_caveat(methods: Mapping[str, Any]) -> list[str]:
    """A warning when no method's LDS stands out from zero by its spread."""
    if not no_lds_signal(methods):
        return []
    return [
        "",
        "**No LDS signal.** Every method's LDS is within its ± of 0 here: at this size the "
        "retrained models' query losses do not follow which half of the train sequences they "
        "saw by more than the retraining noise, so this LDS tells the methods apart in "
        "nothing, and the LDS target below is vacuous (met or not, it says nothing).",
    ]


def beside_note(d: Mapping[str, Any], methods: Mapping[str, Any]) -> list[str]:
    """Which methods' timed runs began while the retraining process still ran (records that
    keep when each run began): those shared the machine with it, the others did not."""
    minutes = d["retrained"].get("helper_minutes")
    if minutes is None or "started_at" not in d:
        return []
    end = d["started_at"] + 60 * minutes
    counts = [
        (k, sum(t < end for t in m["round_starts"]), len(m["round_starts"]))
        for k, m in methods.items()
        if m.get("round_starts")
    ]
    parts = [f"{LABELS[k]} {n} of {total}" for k, n, total in counts]
    return [
        "",
        "Timed runs that began while the retraining process still ran (they shared the "
        f"machine with it; the others did not): {', '.join(parts)}.",
    ]


def shift_note(retrained: Mapping[str, Any]) -> list[str]:
    """How much of the retrained query losses is a shift common to a model's queries (records
    that hold it)."""
    if "model_shift_std" not in retrained:
        return []
    return [
        "",
        f"Retrained query losses: a query's loss varies by {retrained['per_query_std']:.2f} "
        "nats (standard deviation over the retrained models, median over the queries); a "
        f"model's mean loss over all queries varies by {retrained['model_shift_std']:.2f} "
        "(a shift common to all of its queries: one retraining better than another as a "
        "whole), and with that shift taken out a query's loss varies by "
        f'{retrained["per_query_std_shift_removed"]:.2f}. Column "LDS, model shift out": '
        "the LDS against the losses less each model's mean over the queries.",
    ]


def variant_note(methods: Mapping[str, Any], tokens: int) -> list[str]:
    """What the 1 MiB mmap threshold costs ours' projected run (records that ran the variant)."""
    ok = {k: m for k, m in methods.items() if "error" not in m}
    if VARIANT not in ok or "projected" not in ok:
        return []
    default, held = seconds(ok["projected"]), seconds(ok[VARIANT])
    return [
        "",
        f"{LABELS[VARIANT]}: the same worker with glibc's mmap threshold at 32 MiB "
        "(`MALLOC_MMAP_THRESHOLD_=33554432`, a threshold the user chose, which "
        "`infl_array.engine.allocator` leaves alone) instead of the 1 MiB it holds once a "
        "memory budget is made (issue 21: freed memory leaves the process). With 1 MiB every "
        "tensor of 1 MiB or more of the model's forward and backward passes is a fresh "
        f"mapping: fit + matrix {fmt_t(default)} at 1 MiB (the default, the row above) vs "
        f"{fmt_t(held)} at 32 MiB ({default / held:.2f}x; "
        f"{throughput(ok[VARIANT], tokens):,.0f} train tok/s). No target counts this row.",
    ]


def notes(methods: Mapping[str, Any]) -> list[str]:
    out = []
    for name, m in methods.items():
        if "error" in m:
            out.append(f"- {LABELS[name]} failed: `{m['error']}`.")
        elif m.get("note"):
            out.append(f"- {LABELS[name]}: {m['note']}")
    return out
