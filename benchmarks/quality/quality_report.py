"""Tables and target checks of the attribution-quality benchmark (``quality/quality.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import quality_damping as damping
from results_md import record_head, table

SECTION = "## Attribution quality (issue 12)"
SAME_METHOD_TOLERANCE = 0.02
# the peer method that is "the same method" as each of ours
COUNTERPARTS = {
    "Direct": ["pyDVL Direct"],
    "CG": ["pyDVL CG"],
    "LiSSA": ["pyDVL LiSSA"],
    "Arnoldi": ["pyDVL Arnoldi"],
    "EK-FAC": ["pyDVL EK-FAC", "Kronfluence EK-FAC"],
    "K-FAC": ["pyDVL K-FAC", "Kronfluence K-FAC"],
    "EK-FAC empirical": ["Kronfluence EK-FAC empirical"],
    "Nystroem": ["pyDVL Nystroem"],
    "DataInf": ["pyDVL DataInf"],
}


def row_correlation(scores: np.ndarray, reference: np.ndarray) -> float:
    """Mean over test points of the Pearson correlation of a score row with the reference's."""
    a = scores - scores.mean(1, keepdims=True)
    b = reference - reference.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    ok = den > 0
    return float(((a * b).sum(1)[ok] / den[ok]).mean()) if ok.any() else float("nan")


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return float(np.sqrt(max(var, 0.0) / (n_pos * n_neg)))


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s:.0f} s"


def case_table(result: dict[str, Any]) -> str:
    """The markdown table of one case."""
    lines = [
        "| method | LDS (+- sd) | LOO Pearson | LOO Spearman | detection AUC | fit + matrix "
        "| fit + self-influence | corr. with our Direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['skipped']} |  |  |  |  |  |  |")
            continue
        corr = row.get("corr_direct")
        lines.append(
            f"| {name} | {row['lds']:.3f} +- {row['lds_spread']:.3f} | {row['loo_pearson']:.3f} "
            f"| {row['loo_spearman']:.3f} | {row['auc']:.3f} | {_seconds(row['seconds'])} "
            f"| {_seconds(row['self_seconds'])} | {'' if corr is None else f'{corr:.3f}'} |"
        )
    return "\n".join(lines)


def _describe(result: dict[str, Any]) -> str:
    meta, s = result["meta"], result["settings"]
    case = meta["case"]
    clean, noisy = meta["clean"], meta["noisy"]
    lo, hi = clean["hessian_eig_min_max"]
    return (
        f"**{case['name']}** ({case['kind']}, {meta['n_params']} parameters, "
        f"{case['n_train']} train / {case['n_test']} test digits; clean model train/test "
        f"accuracy {clean['train_accuracy']:.3f}/{clean['test_accuracy']:.3f}, noisy model "
        f"{noisy['train_accuracy']:.3f}/{noisy['test_accuracy']:.3f}; weight decay "
        f"{case['weight_decay']:g}, regularization {s['regularization']:g}, eigenvalues of H "
        f"(clean) in [{lo:.3g}, {hi:.3g}]; influence in {s['dtype']}): "
        f"{result['n_subsets']} subsets, {result['n_loo']} leave-one-out points, detection on "
        f"{result['n_detect']} points ({result['n_flipped']} flipped); data, models and "
        f"retraining {result['prepare_seconds']:.0f} s in this run (cached ones are not "
        f"retrained)."
    )


def _best(rows: dict[str, Any], prefix: str, key: str) -> tuple[str, float] | None:
    cand = [
        (n, r[key])
        for n, r in rows.items()
        if "skipped" not in r
        and (n.startswith(prefix) if prefix == "ours " else not n.startswith("ours "))
    ]
    return max(cand, key=lambda c: c[1]) if cand else None


def targets(results: list[dict[str, Any]]) -> str:
    """The issue's targets, checked on each case, as markdown bullet lines."""
    lines = []
    for result in results:
        rows, case = result["rows"], result["case"]
        n_pos, n_neg = result["n_flipped"], result["n_detect"] - result["n_flipped"]
        for key, what in (("lds", "LDS"), ("auc", "detection AUC")):
            ours, peer = _best(rows, "ours ", key), _best(rows, "peer", key)
            if ours is None or peer is None:
                continue
            met = "met" if ours[1] >= peer[1] else "**not met**"
            if key == "lds":
                sd = rows[ours[0]]["lds_spread"]
                note = f" (bootstrap sd {sd:.3f})"
            else:
                note = f" (standard error {auc_standard_error(peer[1], n_pos, n_neg):.3f})"
            lines.append(
                f"- {case}: best {what} of ours {ours[1]:.4f} ({ours[0]}) vs best peer "
                f"{peer[1]:.4f} ({peer[0]}){note}: {met}"
            )
        for label, names in COUNTERPARTS.items():
            mine = rows.get(f"ours {label}")
            for name in names:
                theirs = rows.get(name)
                if not mine or not theirs or "skipped" in mine or "skipped" in theirs:
                    continue
                diff = mine["lds"] - theirs["lds"]
                ok = "within" if abs(diff) <= SAME_METHOD_TOLERANCE else "**outside**"
                lines.append(
                    f"- {case}: ours {label} LDS {mine['lds']:.3f} vs {name} {theirs['lds']:.3f}:"
                    f" difference {diff:+.3f}, {ok} {SAME_METHOD_TOLERANCE}"
                )
        if result.get("sweep"):
            lines.append(damping.sweep_target(case, result["sweep"]))
    return "\n".join(lines)


def render(record: dict[str, Any]) -> str:
    """The whole RESULTS.md section, from the record ``quality`` alone."""
    d = record["data"]
    results = d["results"]
    parts = [
        *record_head(record),
        "",
        "Methods whose results were cached from an earlier run with the same settings (and, "
        "for ours, the same library code) are not rerun: their time columns are from the run "
        "that computed them. "
        "LDS: Spearman correlation over the retrained subsets between the sum of a subset's "
        "scores and the retrained model's output (log p of the true class), mean over the test "
        "points; +- the standard deviation over 200 bootstrap resamples of the subsets. LOO: "
        "correlation over the removed points between minus the summed scores and the change "
        "of the summed test output when the point is removed. Detection AUC: flipped labels "
        "ranked by self-influence on the noisy model, largest first. Times: wall time of one "
        f"fresh process on {d['threads']} thread(s) (fit + full matrix; fit on the noisy model "
        "+ self-influence) on a machine shared with other jobs (load in the head above): "
        "compare them within a factor of 2 only. "
        "`corr. with our Direct`: mean over test points of the Pearson correlation of a score "
        "row with our Direct's (how close a method is to the exact inverse).",
        "",
    ]
    grid = ", ".join(f"{f:g}x" for f in d["grid_factors"])
    swept = [r["case"] for r in results if r.get("sweep")]
    parts += [
        f"This run: case(s) {', '.join(r['case'] for r in results)}; retrained subsets "
        f"{', '.join(str(r['n_subsets']) for r in results)}; damping sweep on "
        f"{', '.join(swept) or 'no case'}; methods: those in the tables (the command lists "
        "them where it chose a subset).",
        "",
    ]
    for result in results:
        parts += [_describe(result), "", case_table(result), ""]
        if result.get("sweep"):
            parts += [
                f"Damping sweep ({result['case']}): LDS at each damping ({grid} the case's; "
                "all test points; bold: the best), the damping chosen on each half of the test "
                "points, and the held-out LDS (each half scored at the damping chosen on the "
                "other; see `benchmarks/quality/quality_damping.py`).",
                "",
                damping.sweep_table(result["sweep"]),
                "",
            ]
    parts += ["### Targets", "", targets(results), "", notes(results, grid), ""]
    return "\n".join(parts)


def notes(results: list[dict[str, Any]], grid: str) -> str:
    """What every method got, and the conventions that differ between libraries."""
    s = results[0]["settings"] if results else {}
    return f"""### Settings and conventions

- Same models, data and subsets for everyone: each method runs in a fresh process (ours in the
  project's environment through `ia.InfluenceArray.create` and numpy reads; pyDVL 0.10.0,
  Kronfluence 1.0.1 and traker 0.3.2 each in its own venv) on the saved `state_dict`s and
  data. Damping: every method gets the case's regularization lambda (ours and pyDVL's
  `regularization`, pyDVL's EK-FAC `hessian_regularization`, Kronfluence's `damping_factor`,
  TRAK's `lambda_reg = n_train * lambda`, its scale). Arnoldi and Nystroem: rank
  {s.get("rank")}; Nystroem's random sketch is drawn after `torch.manual_seed(0)` on both
  sides, so ours and pyDVL's use the same sketch. LiSSA (ours and pyDVL's):
  `maxiter={s.get("lissa_maxiter")}`, `scale` = 1.2 x the top eigenvalue of H + lambda Id
  (rounded up), `dampen=0`: a series truncated after {s.get("lissa_maxiter")} terms leaves
  directions with eigenvalues below about scale/{s.get("lissa_maxiter")} under-inverted,
  which costs it LDS against the exact methods on both sides. CG: `rtol=1e-4, atol=1e-6` on
  both sides, with the same stopping rule (`||r|| < max(rtol**2 ||g||, atol**2)`, pyDVL's,
  ours by default); both run block CG over all right-hand sides (`solve_simultaneously=True`:
  one shared Krylov space). pyDVL is fitted on one full-batch DataLoader,
  so its batch-averaged Hessian is the Hessian of the mean loss, as ours.
- pyDVL's EK-FAC and K-FAC (`update_diagonal=True`/`False`) run in float32 (pyDVL 0.10
  allocates its Kronecker blocks in float32) and only on `nn.Linear` layers (not on the CNN).
  Its output-gradient covariance weights every class by sqrt(p) (a deterministic true-Fisher
  estimate); Kronfluence draws one label per example from the model (a Monte-Carlo true
  Fisher), a noisier estimate of the same matrix on a train set this small, hence its lower
  LDS than pyDVL's with the same damping. Ours (`EkfacInfluence`, default
  `fisher_type="auto"`: pyDVL's sqrt(p)-weighted pseudo-gradients, in float64) gives pyDVL's
  values on the Linear models; Kronfluence's differ by its sampled labels only: with the true
  labels on both sides (`EK-FAC empirical`: ours `fisher_type="empirical"`, Kronfluence's
  `use_empirical_fisher=True`) the two agree on every case, the CNN included. K-FAC on the
  CNN also differs in the eigenvalue scale of convolutions (ours `s_G s_A / T` with `T`
  positions per sample, Kronfluence's `s_G s_A` of position-averaged factors; see
  `infl_array/torch/layerwise/ekfac.py`).
- Projected (`ProjectedInfluence`): `projection_dim={s.get("projection_dim")}`, fewer than
  the parameters of every case, so the gradients are really projected (at `projection_dim`
  >= the parameters it equals our EK-FAC exactly, and 4096 would be that here); EK-FAC
  preconditioner in the projected space, seed 0.
- TRAK: one checkpoint (the same trained model; TRAK's docs, "Quickstart", recommend an
  ensemble of independently trained checkpoints, not run here), `proj_dim`
  {s.get("trak_proj_dim")} (ours Projected: {s.get("projection_dim")}), its margin output and
  `1 - p` weights, a Gauss-Newton matrix in a random projection (BasicProjector, normal,
  CPU); `TRAK undamped` is its default `lambda_reg = 0`, which on one checkpoint is noise.
- Methods that ran over the time budget show it in their row (`skipped`), on each side.
- TRAK's curvature is a Gauss-Newton matrix of the margin in a random projection (positive
  semi-definite); ours per-layer backends (EK-FAC, K-FAC, Projected) use a Fisher,
  block-diagonal over layers (no cross-layer terms); the tables show what each gives.
- Damping: the case's one damping was chosen for the iterative solvers' condition number,
  not for LDS. The sweep tables run the fast methods of every library at {grid} of it
  (each peer in its own scale, as above) and score each at the damping chosen on held-out
  test points (`infl_array.quality.held_out_choice`: chosen on the even test points, scored
  on the odd ones, and the other way round), so the choice does not flatter itself; the
  target line "each method at its held-out damping" compares the methods so. A best value at
  the grid's edge (first or last column) means the grid did not bracket the optimum.
- `GN` rows (ours only): Direct, CG and Nystroem with `second_order_mode=GAUSS_NEWTON` at the
  same regularization as the Hessian rows. That mode is pyDVL's: the mean of the per-sample
  loss-gradient outer products (an empirical Fisher with the true labels), not TRAK's
  `J^T diag(p(1-p)) J` of the margin.
- Detection AUC: the differences between methods are to be read against the standard error
  given in the target lines.
- Backends of ours that `infl_array.torch` does not have yet are skipped with a printed note
  and appear in the next run (one line each in `benchmarks/quality/quality_ours.py`)."""


def readme(record: dict[str, Any]) -> str:
    """A short LDS table for README.md (a marked block ``<!-- render quality
    quality/quality_report.py:readme -->``): each method's LDS per case, from the record."""
    results = record["data"]["results"]
    methods: list[str] = []
    for result in results:
        methods += [m for m in result["rows"] if m not in methods]
    rows = []
    for m in methods:
        cells = []
        for result in results:
            row = result["rows"].get(m)
            cells.append("" if row is None or "skipped" in row else f"{row['lds']:.3f}")
        rows.append([m, *cells])
    header = ["method", *(f"LDS, {r['case']} ({r['meta']['n_params']:,} params)" for r in results)]
    counts = ", ".join(f"{r['case']}: {r['n_subsets']} subsets" for r in results)
    lines = [
        f"LDS from `benchmarks/results/{record['name']}.json` ({record['date'][:10]}; {counts}; "
        f'section "{record["section"][3:]}" of `benchmarks/RESULTS.md`):',
        "",
        *table(header, rows, align="l" + "r" * len(results)),
    ]
    return "\n".join(lines)
