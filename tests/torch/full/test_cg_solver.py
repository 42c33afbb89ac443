"""The batched column CG of ``cg_solver``: systems stopping at different iterations (converged,
at ``maxiter``, or broken down) keep their own results while the others go on."""

from __future__ import annotations

import torch

from infl_array.torch.full.cg_solver import CgSystems, StopRule, iterate_block, iterate_columns

N = 6
SPD = torch.diag(torch.arange(1.0, N + 1, dtype=torch.float64)) + 0.1
INDEFINITE = torch.diag(torch.tensor([1.0, 2.0, 3.0, -0.5, -0.5, -0.5], dtype=torch.float64))


class _Bar:
    def update(self, n: int) -> None:
        pass


def _apply(v: torch.Tensor, col_block: torch.Tensor) -> torch.Tensor:
    """Parameter block 0 is the SPD matrix, block 1 the indefinite one."""
    return torch.where(col_block[None, :] == 0, SPD @ v, INDEFINITE @ v)


def _solve(b: torch.Tensor, col_block: torch.Tensor, maxiter: torch.Tensor) -> CgSystems:
    sys = CgSystems(b, col_block, maxiter, StopRule(1e-6, 1e-12, "scipy"))
    iterate_columns(sys, _apply, lambda r, _: r, _Bar())
    return sys


def test_each_column_ends_as_if_solved_alone():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(N, 5, dtype=torch.float64, generator=gen)
    b[:, 3:] = 1.0  # the indefinite columns: positive curvature first, negative later
    col_block = torch.tensor([0, 0, 0, 1, 1])
    maxiter = torch.tensor([50, 2, 50, 50, 50])  # column 1 stops early, at maxiter
    together = _solve(b, col_block, maxiter)
    for c in range(5):
        alone = _solve(b[:, c : c + 1], col_block[c : c + 1], maxiter[c : c + 1])
        torch.testing.assert_close(together.x[:, c], alone.x[:, 0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(together.r[:, c], alone.r[:, 0], rtol=1e-12, atol=1e-14)
        assert int(together.iters[c]) == int(alone.iters[0])
    exact = torch.linalg.solve(SPD, b[:, [0, 2]])
    torch.testing.assert_close(together.x[:, [0, 2]], exact, rtol=1e-5, atol=1e-8)
    assert int(together.iters[1]) == 2 and bool(together.unconverged()[1])
    assert together.breakdown.tolist() == [False, False, False, True, True]
    # the broken-down columns took steps first and keep their last iterate (not the zero start)
    assert bool((together.iters[3:] >= 1).all())
    assert bool((together.x[:, 3:] != 0).any())
    assert not bool(together.active.any())


def _block_solve(a: torch.Tensor, b: torch.Tensor) -> CgSystems:
    col_block = torch.zeros(b.shape[1], dtype=torch.long)
    maxiter = torch.full_like(col_block, 10 * a.shape[0])
    sys = CgSystems(b, col_block, maxiter, StopRule(1e-4, 1e-12, "scipy"))
    iterate_block(sys, lambda v, _: a @ v, lambda r, _: r, _Bar())
    return sys


def test_block_cg_keeps_the_directions_of_small_residuals():
    """Right-hand sides of very different sizes share one Krylov space: 10 of them in 40
    dimensions span it in 4 iterations, however small some are (float32, where directions of
    the small ones once fell under the rank threshold and were dropped: 8 iterations, and a
    relative error of 3.5e-5)."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64, generator=gen))
    a = (q * torch.linspace(0.1, 1.0, 40, dtype=torch.float64)) @ q.T
    b = torch.randn(40, 10, dtype=torch.float64, generator=gen)
    b[:, 5:] *= 1e-7
    sys = _block_solve(a.float(), b.float())
    assert int(sys.iters.max()) == 4
    assert not bool(sys.unconverged().any()) and not bool(sys.breakdown.any())
    exact = torch.linalg.solve(a, b)
    err = (sys.x.double() - exact).norm(dim=0) / exact.norm(dim=0)
    assert float(err.max()) < 1e-5
