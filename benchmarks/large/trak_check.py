"""Why TRAK's per-row Spearman with EkfacInfluence is what it is: a small check (issue 9).

Usage: ``python benchmarks/large/trak_check.py [--work DIR]`` from the repository root. On the 1e5
ladder CNN with 500 train and 50 test points it runs, each in its own process (outputs kept in
``DIR``, default ``benchmarks/_work/trak_check``, and reused when present): ``EkfacInfluence``,
``ProjectedInfluence`` (width 4096) and TRAK 0.3.2 (``.venv-trak``) at widths 4096 and 256,
undamped (``lambda_reg = 0``, TRAK's default) and damped (``lambda_reg`` relative to its
curvature's mean eigenvalue as ours, see ``peers/trak_scores.py``); then,
without any projection, the exact TRAK formula (margin gradients, ``(G^T G + n reg I)^-1``,
train side weighted by ``1 - p_y``) and the exact damped empirical-Fisher influence. Prints the
mean per-row Spearman correlations. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from bench_large import PEER_VENVS, train
from large_common import data_path, load, make_data, spearman_rows
from torch.func import functional_call, grad, vmap

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/

CASE = {"size": "1e5", "n_train": 500, "n_test": 50, "threads": 2, "rows": 50}
REG = 1e-3
TRAK = [(REG, 4096), (0.0, 4096), (REG, 256), (0.0, 256)]


def worker(work: Path, name: str, python: str, args: list[str]) -> np.ndarray:
    """Run one benchmark worker unless its scores are in ``work`` already; its scores."""
    out = work / f"{name}.json"
    if not out.with_suffix(".npy").exists():
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(BENCH.parent)}
        payload = json.loads(args[-1]) | {"out": str(out)}
        subprocess.run([python, *args[:-1], json.dumps(payload)], check=True, env=env)
    return np.load(out.with_suffix(".npy"))


def flat_grads(model: torch.nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of ``loss(params, x_i, y_i)``, flattened, float64 ``(n, n_params)``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = []
    for s in range(0, len(x), 50):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[s : s + 50], y[s : s + 50])
        out.append(torch.cat([v.reshape(len(x[s : s + 50]), -1) for v in g.values()], 1))
    return torch.cat(out).double()


def damped_solve(g: torch.Tensor, rhs: torch.Tensor, c: float) -> torch.Tensor:
    """``(g^T g + c I)^-1 rhs`` through Woodbury (``g``: ``(n, p)``, ``rhs``: ``(p, k)``)."""
    k = g @ g.T + c * torch.eye(len(g), dtype=g.dtype)
    return (rhs - g.T @ torch.linalg.solve(k, g @ rhs)) / c


def exact(model: torch.nn.Module, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Unprojected TRAK scores and damped empirical-Fisher influence; positive = helpful."""

    def logits(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x[None],))[0]

    def margin(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = logits(p, x)
        mask = torch.arange(z.shape[0]) == y
        return (z * mask).sum() - torch.logsumexp(z.masked_fill(mask, float("-inf")), 0)

    def ce(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits(p, x)[None], y[None])

    x, y, xt, yt = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    n = len(x)
    gm, gmt = flat_grads(model, margin, x, y), flat_grads(model, margin, xt, yt)
    with torch.no_grad():
        p_y = torch.softmax(model(x), 1)[torch.arange(n), y].double()
    trak = damped_solve(gm, gmt.T, n * REG).T @ gm.T * (1 - p_y)[None]
    gl, glt = flat_grads(model, ce, x, y), flat_grads(model, ce, xt, yt)
    fisher = damped_solve(gl / n**0.5, glt.T, REG).T @ gl.T
    return trak.numpy(), fisher.numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(BENCH / "_work" / "trak_check"))
    work = Path(p.parse_args().work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    path = data_path(CASE["n_train"], CASE["n_test"])
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(make_data(CASE["n_train"], CASE["n_test"]), path)
    train(CASE["size"], torch.load(path), CASE["n_train"], 0)
    ours = str(BENCH / "large" / "large_ours.py")
    ek_args = CASE | {"reg": REG, "store": str(work / "store")}
    ek = worker(work, "ekfac", sys.executable, [ours, "ekfac", json.dumps(ek_args)])
    proj_args = CASE | {"reg": REG, "dim": 4096, "store": str(work / "store")}
    proj = worker(work, "projected", sys.executable, [ours, "projected", json.dumps(proj_args)])
    rho, traks = {}, {}
    trak_py = str(PEER_VENVS / ".venv-trak" / "bin" / "python")
    trak_script = str(BENCH / "peers" / "trak_scores.py")
    for reg, dim in TRAK:
        args = json.dumps(CASE | {"reg": reg, "dim": dim, "batch": 100, "checkpoints": 1})
        traks[reg, dim] = t = worker(work, f"trak_{reg}_{dim}", trak_py, [trak_script, args])
        label = f"TRAK 0.3.2 width {dim}, lambda_reg {'relative as ours' if reg else '0'}"
        rho[f"{label} vs EK-FAC"] = spearman_rows(t, ek).mean()
        rho[f"{label} vs projected"] = spearman_rows(t, proj).mean()
    damped = traks[TRAK[0]]
    trak, fisher = exact(*load(CASE["size"], CASE["n_train"], CASE["n_test"]))
    rho["projected vs EK-FAC"] = spearman_rows(proj, ek).mean()
    rho["exact TRAK formula vs TRAK 0.3.2 (4096, damped)"] = spearman_rows(trak, damped).mean()
    rho["exact TRAK formula vs exact empirical Fisher"] = spearman_rows(trak, fisher).mean()
    rho["exact TRAK formula vs EK-FAC"] = spearman_rows(trak, ek).mean()
    rho["exact empirical Fisher vs EK-FAC"] = spearman_rows(fisher, ek).mean()
    for k, v in rho.items():
        print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
