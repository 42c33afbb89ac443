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
    "bergson": "bergson (gradient store + FAISS)",
    "kronfluence": "Kronfluence 1.0.1 (EK-FAC)",
    "dattri": "dattri (projected IF)",
}
OURS = ("ekfac", "projected")


def seconds(m: Mapping[str, Any]) -> float:
    """Fit plus the whole matrix (every timed phase of the worker)."""
    return float(sum(m["times"].values()))


def throughput(m: Mapping[str, Any], tokens: int) -> float:
    return tokens / seconds(m)


def method_row(name: str, m: Mapping[str, Any], tokens: int) -> list[str]:
    if "error" in m:
        return [LABELS[name], "", "", "", "", "", "", "failed (below)"]
    width = f"{m['width']:,}" if m.get("width") else "full"
    covered = f"{m['covered']:.1%}" if m.get("covered") is not None else "?"
    lds = f"{m['lds']:.3f} ± {m['lds_std']:.3f}" if "lds" in m else "n/a"
    ranks = m.get("duplicate_ranks", [])
    dup = f"{sum(r == 1 for r in ranks)}/{len(ranks)} (ranks {', '.join(map(str, ranks))})"
    return [
        LABELS[name],
        width,
        covered,
        fmt_t(seconds(m)),
        f"{throughput(m, tokens):,.0f}",
        fmt_mb(m["peak_rss"]),
        lds,
        dup,
    ]


def targets(methods: Mapping[str, Any], tokens: int, coverage: Mapping[str, Any]) -> list[str]:
    ok = {k: m for k, m in methods.items() if "error" not in m}
    ours = {k: m for k, m in ok.items() if k in OURS}
    peers = {k: m for k, m in ok.items() if k not in OURS}
    rows = []
    if ours and peers:
        best_ours = max(ours, key=lambda k: throughput(ours[k], tokens))
        best_peer = max(peers, key=lambda k: throughput(peers[k], tokens))
        a, b = throughput(ours[best_ours], tokens), throughput(peers[best_peer], tokens)
        rows.append(
            [
                "ours at least as fast as the fastest peer",
                f"{LABELS[best_ours]} {a:,.0f} tok/s vs {LABELS[best_peer]} {b:,.0f} tok/s",
                yes_no(a >= b),
            ]
        )
        with_lds = [k for k in ok if "lds" in ok[k]]
        if any(k in OURS for k in with_lds) and any(k not in OURS for k in with_lds):
            lo = max((k for k in with_lds if k in OURS), key=lambda k: ok[k]["lds"])
            hi = max((k for k in with_lds if k not in OURS), key=lambda k: ok[k]["lds"])
            x, y = ok[lo]["lds"], ok[hi]["lds"]
            rows.append(
                [
                    "ours within 0.02 LDS of the best peer, or better",
                    f"{LABELS[lo]} {x:.3f} vs {LABELS[hi]} {y:.3f}",
                    yes_no(x >= y - 0.02),
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
    return table(["target", "measured", "met"], rows)


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
    methods = d["methods"]
    lines = record_head(record)
    cfg = model["config"]
    lines += [
        "",
        f"Model: GPT-2 config from `transformers` ({cfg['n_layer']} layers, width "
        f"{cfg['n_embd']}, {cfg['n_head']} heads, byte vocabulary {cfg['vocab_size']}, "
        f"tied embedding/output; {model['parameters']:,} parameters), random init, trained "
        f"here for {s['epochs']} epochs (AdamW, one-cycle lr {s['lr']}, batch {s['batch']}) on "
        f"{s['n_train']:,} train sequences of {d['tokens_per_sequence']} byte tokens of the "
        "standard library's `.py` sources (first files in sorted order); "
        f"{s['n_test']} query sequences from later files, {s['dups']} of them planted in the "
        f"train set. Loss per token: train {model['train_loss_per_token']:.3f}, queries "
        f"{model['query_loss_per_token']:.3f} nats. Every method computes the whole "
        f"({s['n_test']} x {s['n_train']:,}) matrix in its own process (its own venv), "
        f"{s['threads']} thread(s); time = fit + the matrix (ours: `fit`, then "
        "`ia.InfluenceArray.create(...)` + `fill()` + a full read); train tokens/s = "
        f"{tokens:,} train tokens / that time. Ours: regularization {s['regularization']} "
        f"(absolute), empirical Fisher, batch {s['method_batch']}; projected width "
        f"{s['projection_dim']} for ours, bergson and dattri.",
        "",
        f"LDS: {d['retrained']['models']} models retrained on random "
        f"{s['subset_fraction']:.0%} subsets of the train sequences (same init and schedule, "
        "seeded order); output = minus the query's summed loss; ± = bootstrap spread over the "
        "subsets. Duplicates: how many planted duplicates rank first in their query's row "
        "(and each one's rank).",
        "",
    ]
    header = [
        "method",
        "width",
        "covered params",
        "fit + matrix",
        "train tok/s",
        "peak RSS",
        "LDS",
        "duplicate first",
    ]
    rows = [method_row(k, m, tokens) for k, m in methods.items()]
    lines += table(header, rows, align="llrrrrrl")
    lines += ["", "Targets:", "", *targets(methods, tokens, d["coverage"])]
    lines += ["", "Coverage of the trainable parameters (small configs, random tokens):", ""]
    lines += coverage_table(d["coverage"])
    lines += ["", *notes(methods)]
    return "\n".join(lines) + "\n"


def notes(methods: Mapping[str, Any]) -> list[str]:
    out = []
    for name, m in methods.items():
        if "error" in m:
            out.append(f"- {LABELS[name]} failed: `{m['error']}`.")
        elif m.get("note"):
            out.append(f"- {LABELS[name]}: {m['note']}")
    return out
