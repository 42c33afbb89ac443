"""Damping sweep of the attribution-quality benchmark: each method at its own best damping.

The main tables give every method the case's one damping ``lambda`` (``Case.regularization``).
LDS depends on the damping at least as much as on the method, and methods are not equally
sensitive to it (TRAK's Gram matrix of margin gradients lives on another scale than a
Hessian), so one shared value can favour one method over another. Here each method in
:data:`SWEEP_METHODS` runs at every damping of :data:`GRID_FACTORS` times the case's
``lambda`` (the same grid for everyone, peers given it in their own scale as in the main
tables), and its damping is chosen on held-out test points:

:func:`infl_array.quality.held_out_choice`: the damping chosen on the even test positions is
scored on the odd ones and the other way round; the held-out LDS is the mean of the two (every
test point is scored by a damping that was not chosen on it), so picking the best of five
dampings does not inflate it.

Runs go through ``benchmarks/quality/quality.py``'s ``run_method`` (fresh processes, same workers,
cached per settings, so the damping that equals the case's reuses the main table's runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from infl_array.quality import held_out_choice

GRID_FACTORS = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Dampings of the sweep, as multiples of the case's ``regularization``."""

SWEEP_METHODS = [
    ("ours", "Direct"),
    ("ours", "Nystroem"),
    ("ours", "EK-FAC"),
    ("ours", "Projected"),
    ("pyDVL", "Direct"),
    ("pyDVL", "Nystroem"),
    ("Kronfluence", "EK-FAC"),
    ("TRAK", "TRAK"),
]
"""The fast methods of every peer (the slow solvers give Direct's values at more cost)."""

Run = Callable[[dict[str, Any], str, str], dict[str, Any]]
"""``run(settings, peer, label) -> result`` (``scores`` or ``skipped``)."""


def sweep_case(
    base: dict[str, Any],
    data: dict[str, np.ndarray],
    run: Run,
    with_settings: Callable[[float], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every method of :data:`SWEEP_METHODS` at every damping of the grid, and its choice.

    Parameters
    ----------
    base : dict
        The case's settings (``regularization``: the centre of the grid).
    data : dict
        ``subsets`` and ``outputs`` of the retrained models.
    run : callable
        Runs one method at the given settings (cached).
    with_settings : callable
        ``damping -> settings`` (the case's, with that regularization and what depends on it).
    """
    dampings = [float(f"{base['regularization'] * f:.3g}") for f in GRID_FACTORS]
    rows: dict[str, Any] = {}
    for peer, label in SWEEP_METHODS:
        scores: dict[float, np.ndarray] = {}
        notes = {}
        for damping in dampings:
            result = run(with_settings(damping), peer, label)
            if "skipped" in result:
                notes[damping] = str(result["skipped"])
            else:
                scores[damping] = result["scores"]
        row: dict[str, Any] = {"lds": {}, "skipped": notes}
        if scores:
            choice = held_out_choice(scores, data["subsets"], data["outputs"])
            row.update(lds=choice.lds, chosen=list(choice.chosen), held_out=choice.held_out)
        rows[f"{peer} {label}"] = row
        done = ", ".join(f"{d:g}: {v:.3f}" for d, v in row["lds"].items())
        log(f"  sweep {peer} {label}: {done}")
    return {"dampings": dampings, "rows": rows}


def sweep_table(sweep: dict[str, Any]) -> str:
    """Markdown table: LDS at each damping, the damping chosen per half, the held-out LDS."""
    dampings = sweep["dampings"]
    head = " | ".join(f"lambda {d:g}" for d in dampings)
    lines = [
        f"| method | {head} | chosen (halves) | held-out LDS |",
        "|---|" + "---:|" * (len(dampings) + 2),
    ]
    for name, row in sweep["rows"].items():
        best = max(row["lds"], key=row["lds"].__getitem__, default=None)
        cells = []
        for d in dampings:
            if d in row["lds"]:
                value = f"{row['lds'][d]:.3f}"
                cells.append(f"**{value}**" if d == best else value)
            else:
                cells.append("skipped")
        if "held_out" in row:
            chosen = " / ".join(f"{d:g}" for d in row["chosen"])
            tail = f"{chosen} | {row['held_out']:.3f}"
        else:
            tail = " | "
        lines.append(f"| {name} | {' | '.join(cells)} | {tail} |")
    skipped = {
        f"{name} at {d:g}": why
        for name, row in sweep["rows"].items()
        for d, why in row["skipped"].items()
    }
    if skipped:
        lines.append("")
        lines += [f"- skipped: {k}: {why}" for k, why in skipped.items()]
    return "\n".join(lines)


def sweep_target(case: str, sweep: dict[str, Any]) -> str:
    """The target line at each method's held-out damping: best of ours against the best peer."""
    scored = {k: r["held_out"] for k, r in sweep["rows"].items() if "held_out" in r}
    ours = {k: v for k, v in scored.items() if k.startswith("ours ")}
    peers = {k: v for k, v in scored.items() if not k.startswith("ours ")}
    if not ours or not peers:
        return f"- {case}, each method at its held-out damping: not enough methods ran"
    o, p = max(ours, key=ours.__getitem__), max(peers, key=peers.__getitem__)
    verdict = "met" if ours[o] >= peers[p] else "**not met**"
    return (
        f"- {case}, each method at its held-out damping: best of ours {ours[o]:.3f} ({o}) vs "
        f"best peer {peers[p]:.3f} ({p}): {verdict}"
    )
