"""Batched conjugate gradient on many systems at once, apart from any model.

:class:`CgSystems` is the state of one solve: ``(p, m)`` columns (right-hand sides ``b``,
solutions ``x``, residuals ``r``), each column a system of one parameter block, with which are
still active, their iterations and breakdowns; :class:`StopRule` is the stopping rule
(``tol_mode``). :func:`iterate_columns` (every system its own CG) and :func:`iterate_block`
(block CG, one Krylov space per parameter block) advance every system, given the operator and
the preconditioner as plain callables of ``(vectors, column blocks)``.
:class:`~infl_array.torch.full.cg.CgInfluence` builds them from its curvature passes; its
module docstring states the algorithms and the stopping rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Apply", "CgSystems", "StopRule", "TOL_MODES", "iterate_block", "iterate_columns"]

TOL_MODES = ("pydvl", "scipy")

Apply = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``f(v, col_block)``: an operator (or a preconditioner's inverse) applied to the columns ``v``
``(p, k)``, column ``c`` belonging to the parameter block ``col_block[c]``."""


@dataclass(frozen=True)
class StopRule:
    """When a system stops: ``||r|| < max(rtol**2*||g||, atol**2)`` (``tol_mode="pydvl"``) or
    ``||r|| <= max(rtol*||g||, atol)`` (``"scipy"``)."""

    rtol: float
    atol: float
    tol_mode: str

    def tolerance(self, bnorm: torch.Tensor) -> torch.Tensor:
        """Each system's tolerance, from the norms of its right-hand side."""
        if self.tol_mode == "pydvl":
            return torch.clamp(self.rtol**2 * bnorm, min=self.atol**2)
        return torch.clamp(self.rtol * bnorm, min=self.atol)

    def unconverged(self, res: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        """Which systems, with residual norms ``res``, have not met their tolerance ``tol``."""
        if self.tol_mode == "pydvl":
            return (res >= tol) & (res > 0)
        return res > tol

    def describe(self) -> str:
        """The rule, for messages."""
        if self.tol_mode == "pydvl":
            return "||residual|| < max(rtol**2*||g||, atol**2)"
        return "||residual|| <= max(rtol*||g||, atol)"


@dataclass
class CgSystems:
    """The systems of one solve, ``(p, m)`` columns, updated in place by the iterations."""

    b: torch.Tensor
    col_block: torch.Tensor
    maxiter: torch.Tensor
    rule: StopRule
    tol: torch.Tensor = field(init=False)
    x: torch.Tensor = field(init=False)
    r: torch.Tensor = field(init=False)
    active: torch.Tensor = field(init=False)
    iters: torch.Tensor = field(init=False)
    breakdown: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        bnorm = torch.linalg.vector_norm(self.b, dim=0)
        self.tol = self.rule.tolerance(bnorm)
        self.x = torch.zeros_like(self.b)
        self.r = self.b.clone()
        self.active = self.rule.unconverged(bnorm, self.tol)
        self.iters = torch.zeros_like(self.col_block)
        self.breakdown = torch.zeros_like(self.active)

    def step_done(self, cols: torch.Tensor, r_cols: torch.Tensor | None = None) -> None:
        """Count an iteration of ``cols`` and deactivate those converged or at ``maxiter``
        (``r_cols``: their residuals, when held apart from :attr:`r`)."""
        self.iters[cols] += 1
        r_cols = self.r[:, cols] if r_cols is None else r_cols
        res = torch.linalg.vector_norm(r_cols, dim=0)
        self.active[cols] = self.rule.unconverged(res, self.tol[cols]) & (
            self.iters[cols] < self.maxiter[cols]
        )

    def break_down(self, cols: torch.Tensor) -> None:
        """Stop ``cols``: the operator (or the preconditioner) is not positive definite there."""
        self.breakdown[cols] = True
        self.active[cols] = False

    def unconverged(self) -> torch.Tensor:
        """Systems that stopped short of their tolerance without breaking down."""
        res = torch.linalg.vector_norm(self.r, dim=0)
        return self.rule.unconverged(res, self.tol) & ~self.breakdown


def iterate_columns(sys: CgSystems, apply: Apply, precondition: Apply, bar: Any) -> None:
    """Every system its own CG (own step sizes), all advanced together.

    The active systems are held compacted (``x``, ``r``, ``p`` of those columns only, no
    gather or scatter per iteration); a column is written back to ``sys`` when it stops.
    """
    cols = sys.active.nonzero().squeeze(1)
    if cols.numel() == sys.x.shape[1]:  # all active: iterate on sys's own columns, no copies
        blk, x, r = sys.col_block, sys.x, sys.r
    else:
        blk, x, r = sys.col_block[cols], sys.x[:, cols], sys.r[:, cols]
    z = precondition(r, blk)
    p = z.clone()
    rz = column_dots(r, z)
    while cols.numel():
        ap = apply(p, blk)
        curv = column_dots(p, ap)
        bad = (curv <= 0) | (rz <= 0)
        if bool(bad.any()):  # A (or M) not positive definite here: stop those
            sys.break_down(cols[bad])
            sys.x[:, cols[bad]], sys.r[:, cols[bad]] = x[:, bad], r[:, bad]
            keep = ~bad
            cols, blk, x, r, p, rz, ap, curv = (
                t[..., keep] for t in (cols, blk, x, r, p, rz, ap, curv)
            )
        alpha = rz / curv
        x.addcmul_(p, alpha)  # in place: no (p, m) temporaries beside the iterates
        r.addcmul_(ap, alpha, value=-1)
        del ap
        z = precondition(r, blk)
        rz_new = column_dots(r, z)
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
        sys.step_done(cols, r)
        bar.update(1)
        going = sys.active[cols]
        if not bool(going.all()):  # write the stopped columns back, keep the rest
            done = ~going
            sys.x[:, cols[done]], sys.r[:, cols[done]] = x[:, done], r[:, done]
            cols, blk, x, r, p, rz = (t[..., going] for t in (cols, blk, x, r, p, rz))


DOT_ROWS = 1 << 16
"""Rows per piece of :func:`column_dots` (its temporary is at most this many rows)."""


def column_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(0)``, the dot product of each column pair, without an ``a``-sized
    temporary (pieces of :data:`DOT_ROWS` rows: the iterates of a large model are hundreds of
    MB each)."""
    if a.shape[0] <= DOT_ROWS:
        return (a * b).sum(0)
    out = torch.zeros(a.shape[1:], dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    for s in range(0, a.shape[0], DOT_ROWS):
        out += (a[s : s + DOT_ROWS] * b[s : s + DOT_ROWS]).sum(0)
    return out


def iterate_block(sys: CgSystems, apply: Apply, precondition: Apply, bar: Any) -> None:
    """Block CG: one shared Krylov space per parameter block, all blocks advanced together."""
    col_block, r, active = sys.col_block, sys.r, sys.active
    directions: dict[int, torch.Tensor] = {}  # parameter block -> orthonormal P (p, k)
    for g in torch.unique(col_block[active]).tolist():
        cols = (active & (col_block == g)).nonzero().squeeze(1)
        directions[g] = orthonormal(precondition(r[:, cols], col_block[cols]))
    while directions:
        groups = list(directions)
        p_all = torch.cat([directions[g] for g in groups], dim=1)
        dir_block = torch.cat(
            [torch.full((directions[g].shape[1],), g, device=r.device) for g in groups]
        )
        q_all = apply(p_all, dir_block)
        start = 0
        for g in groups:
            p_g = directions.pop(g)
            q_g = q_all[:, start : start + p_g.shape[1]]
            start += p_g.shape[1]
            p_new = _block_step(sys, g, p_g, q_g, precondition)
            if p_new is not None:
                directions[g] = p_new
        bar.update(1)


def _block_step(
    sys: CgSystems, g: int, p_g: torch.Tensor, q_g: torch.Tensor, precondition: Apply
) -> torch.Tensor | None:
    """One block-CG step of parameter block ``g`` (directions ``P``, ``Q = A P``); returns the
    next directions, or None when the block is done or broke down."""
    cols = (sys.active & (sys.col_block == g)).nonzero().squeeze(1)
    ptq = p_g.T @ q_g
    chol, info = torch.linalg.cholesky_ex((ptq + ptq.T) / 2)
    if int(info) != 0:  # A (or M) not positive definite: stop the block
        sys.break_down(cols)
        return None
    alpha = torch.cholesky_solve(p_g.T @ sys.r[:, cols], chol)
    sys.x[:, cols] += p_g @ alpha
    sys.r[:, cols] -= q_g @ alpha
    sys.step_done(cols)
    cols = cols[sys.active[cols]]
    if not cols.numel():
        return None
    z = precondition(sys.r[:, cols], sys.col_block[cols])
    beta = -torch.cholesky_solve(q_g.T @ z, chol)
    p_new = orthonormal(z + p_g @ beta)
    if p_new.shape[1] == 0:  # no new direction while residuals remain: M is singular
        sys.break_down(cols)
        return None
    return p_new


def orthonormal(z: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of ``z`` (numerically dependent ones dropped).

    The columns are scaled to unit norm first (zero columns dropped), so that the rank is
    decided by directions, not magnitudes: the residuals of systems close to convergence are
    orders of magnitude smaller than the others', and unscaled their directions fell under the
    rank threshold and were dropped, which slowed block CG down (13 iterations instead of 6
    for 200 right-hand sides in 771 float32 parameters; pyDVL, keeping every direction, took
    5). Scaling also magnifies the rounding noise of a small column, so a direction is kept
    only above ``sqrt(eps)`` of the largest singular value (and the usual ``eps * max(shape)``).
    """
    norms = torch.linalg.vector_norm(z, dim=0)
    nonzero = norms > 0
    z = z[:, nonzero] / norms[nonzero]
    u, sv, _ = torch.linalg.svd(z, full_matrices=False)
    if not sv.numel() or float(sv[0]) == 0.0:
        return u[:, :0]
    eps = torch.finfo(z.dtype).eps
    keep = sv > sv[0] * max(eps * max(z.shape), eps**0.5)
    return u[:, keep]
