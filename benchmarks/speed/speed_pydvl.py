"""The ``small`` and ``medium`` cases of ``bench_speed.py``: ours against pyDVL 0.10.

Both sides run on the same seeded model and data (:func:`speed_models.problem_for`), each in its
own process: :func:`worker_ours` in the project's environment (``fit`` + ``create`` + ``fill()``
per block shape, then the pieces of the floor and, on request, profiles), and
:func:`worker_pydvl` in ``.venv-pydvl`` (fit, one in-memory ``influences`` call, the
``SequentialInfluenceCalculator``, and for ``small`` its one-right-hand-side-at-a-time CG, timed on
a few (test batch, train batch) pairs and scaled). Each saves its values to ``.npy`` files for
the driver to compare.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, results_md
from harness import Timer, log, scratch_dir
from speed_models import (
    CG_TOL,
    SMALL_BLOCK,
    case_problem,
    caught_warnings,
    factor_pieces,
    medium_blocks,
    model_sha,
    ours_fill,
    profile_text,
)


# ---------------------------------------------------------------------- ours
def worker_ours(
    case: str,
    quick: bool,
    reps: int,
    save: str | None,
    reg: float = 0.01,
    first: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """Our side of ``small`` (CG) or ``medium`` (Direct): fit + create + fill, ``reps`` times.

    ``first`` (the driver's first round): also the values (``save``), the fill's stats, the
    Hessian's eigenvalues (``small``) and the pieces of the floor; ``profile``: cProfile texts
    of one fit and of fills with blocks (256, 4096) and (100, 100).
    """
    prob = case_problem(case, quick)
    import torch

    from infl_array.torch import CgInfluence, DirectInfluence

    model, train, test, ce = prob["model"], prob["train"], prob["test"], prob["loss"]
    train_loader = prob["train_loader"]
    blocks = [SMALL_BLOCK] if case == "small" else medium_blocks(prob["n_test"], prob["n_train"])

    def fit() -> Any:
        if case == "small":
            # block CG, as pyDVL's side is configured (worker_pydvl's ``fit``)
            cg = CgInfluence(model, ce, regularization=reg, solve_simultaneously=True, **CG_TOL)
            return cg.fit(train_loader).prepare()
        return DirectInfluence(model, ce, regularization=0.01).fit(train_loader).prepare()

    res: dict[str, Any] = {
        k: prob[k] for k in ("n_train", "n_test", "batch", "n_params", "acc")
    } | {"model_sha": model_sha(model), "blocks": blocks, "reg": reg if case == "small" else 0.01}
    if case == "small":
        res["solve_simultaneously"] = True
    with scratch_dir(f"bench_speed_{case}") as work, caught_warnings() as w:
        infl = fill_reps(case, reps, fit, prob, blocks, work, save if first else None, res)
        res["cg_iters_last_call"] = getattr(infl, "n_iter_", None)
        if first and case == "small":
            ev = torch.linalg.eigvalsh(infl.hessian().double())
            res["h_eig"] = (float(ev.min()), float(ev.max()))
        if first:
            res |= factor_pieces(infl, train, test)
        if profile and case == "medium":
            for b in ((256, 4096), (100, 100)):
                fill = partial(ours_fill, infl, train, test, b, work / "p.zarr")
                res[f"profile_fill_{b[0]}x{b[1]}"] = profile_text(fill)
            res["profile_fit"] = profile_text(fit)
    res["warnings"] = list(w)
    return res


def fill_reps(
    case: str,
    reps: int,
    fit: Any,
    prob: dict[str, Any],
    blocks: list[tuple[int, int]],
    work: Any,
    save: str | None,
    res: dict[str, Any],
) -> Any:
    """``reps`` times: fit, then create + fill per block shape; times into ``res["fit"]`` and
    ``res["fill"]``, the stats of the first fill of the reported block shape into
    ``res["stats"]`` (and, with ``save``, its values). Returns the last fitted model."""
    import numpy as np

    train, test = prob["train"], prob["test"]
    fits: list[float] = []
    fills: dict[str, list[float]] = {str(b): [] for b in blocks}
    reported = blocks[0 if case == "small" else 1]
    infl = None
    for r in range(reps):
        log(f"  {case} ours: repetition {r + 1}/{reps}")
        t = Timer()
        infl = fit()
        fits.append(t.lap())
        for b in blocks:
            dt, arr = ours_fill(infl, train, test, b, work / "s.zarr")
            fills[str(b)].append(dt)
            if r == 0 and b == reported:
                res["stats"] = dataclasses.asdict(arr.stats)
                if save:
                    np.save(save, np.asarray(arr))
            del arr
            gc.collect()
    res.update(fit=fits, fill=fills)
    return infl


# ---------------------------------------------------------------------- pyDVL
def pydvl_seq(pm: Any, test_loader: Any, train_loader: Any) -> tuple[float, Any]:
    from pydvl.influence import SequentialInfluenceCalculator
    from pydvl.influence.torch.util import NestedTorchCatAggregator

    t = Timer()
    calc = SequentialInfluenceCalculator(pm)
    out = calc.influences(test_loader, train_loader).compute(aggregator=NestedTorchCatAggregator())
    return t.lap(), out


def pydvl_inmem(pm: Any, test: Any, train: Any) -> tuple[float, Any]:
    t = Timer()
    out = pm.influences(test[0], test[1], train[0], train[1])
    return t.lap(), out


def worker_pydvl(
    case: str,
    quick: bool,
    reps: int,
    skip_slow: bool,
    save: str,
    reg: float = 0.01,
    slow_pairs: int = 0,
    first: bool = True,
    skip_medium_seq: bool = False,
) -> dict[str, Any]:
    """pyDVL's side: fit, one in-memory call, the sequential calculator (runs in .venv-pydvl).

    ``first`` (the driver's first round): also the values (``save``), the medium case's
    sequential calculator (once; about 37 minutes on 2 shared cores, left out with
    ``skip_medium_seq``) and the small case's one-right-hand-side CG.
    """
    prob = case_problem(case, quick)
    import numpy as np
    import pydvl
    from pydvl.influence.torch import CgInfluence as PCg
    from pydvl.influence.torch import DirectInfluence as PDirect

    model, train, test, ce = prob["model"], prob["train"], prob["test"], prob["loss"]
    train_loader, test_loader = prob["train_loader"], prob["test_loader"]

    def fit(simultaneous: bool = True) -> Any:
        if case == "small":
            pm = PCg(model, ce, regularization=reg, solve_simultaneously=simultaneous, **CG_TOL)
            return pm.fit(train_loader)
        return PDirect(model, ce, regularization=0.01).fit(train_loader)

    res: dict[str, Any] = {"model_sha": model_sha(model), "pydvl": pydvl.__version__}
    fits, inmem, seq = [], [], []
    with caught_warnings() as w:
        for r in range(reps):
            log(f"  {case} pyDVL: repetition {r + 1}/{reps}")
            t = Timer()
            pm = fit()
            fits.append(t.lap())
            dt, out_inmem = pydvl_inmem(pm, test, train)
            inmem.append(dt)
            keep = first and r == 0
            if keep:
                np.save(save + ".inmem.npy", out_inmem.detach().numpy())
            if case == "small" or (keep and not skip_medium_seq):  # medium: once
                dt, out_seq = pydvl_seq(pm, test_loader, train_loader)
                seq.append(dt)
                if keep:
                    np.save(save + ".seq.npy", out_seq.detach().numpy())
            del pm
            gc.collect()
        if case == "small" and first and not skip_slow:
            pm1 = fit(simultaneous=False)
            res |= pydvl_one_rhs(pm1, test_loader, train_loader, slow_pairs, save)
    res["warnings"] = list(w)
    res.update(fit=fits, inmem=inmem, seq=seq)
    return res


def pydvl_one_rhs(
    pm: Any, test_loader: Any, train_loader: Any, slow_pairs: int, save: str
) -> dict[str, Any]:
    """pyDVL's sequential CG one right-hand side at a time, on ``slow_pairs`` (test batch, train
    batch) pairs (0: all), scaled to all pairs.

    One rhs at a time costs about the same for every pair (each pair repeats the solves), so
    the first pairs, scaled up, give the whole.
    """
    import numpy as np

    n_pairs = len(test_loader) * len(train_loader)
    pairs = min(n_pairs, slow_pairs) if slow_pairs > 0 else n_pairs
    log(f"  small pyDVL: sequential CG one rhs at a time, {pairs}/{n_pairs} pairs")
    if pairs == n_pairs:
        dt, out = pydvl_seq(pm, test_loader, train_loader)
    else:
        first_test = [next(iter(test_loader))]
        train_part = [b for _, b in zip(range(pairs), train_loader, strict=False)]
        dt, out = pydvl_seq(pm, first_test, train_part)
    np.save(save + ".seq_one.npy", out.detach().numpy())
    # measured on ``pairs`` of ``n_pairs`` pairs; the report labels the scaled time so
    return {"seq_one_measured": dt, "seq_one_pairs": pairs, "seq_one_all_pairs": n_pairs}
