"""Exact float64 references for influence tests, written independently of the library.

* :func:`hessian`: the explicit Hessian of the mean loss, ``torch.func.hessian`` over the
  flattened parameters (all of them, in ``named_parameters`` order);
* :func:`grads`: per-sample loss gradients by plain autograd, one sample at a time;
* :func:`block_slices`: the flat indices of each parameter block of a structure;
* :func:`block_solve`: ``sum_b g_test_b (C_bb + lambda_b*Id)^-1 g_train_b^T``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def hessian(model: nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hessian of ``loss(model(x), y)`` over all parameters, flattened in order."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(th: torch.Tensor) -> torch.Tensor:
        parts = torch.split(th, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss(torch.func.functional_call(model, params, (x,)), y)

    with warnings.catch_warnings():  # torch 2.13's forward-mode AD warns about torch.jit.script
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning
        )
        return torch.func.hessian(mean_loss)(theta)


def grads(model: nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss gradients ``(n, n_params)``, one backward pass per sample."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())  # type: ignore[union-attr]
    model.zero_grad()
    return torch.stack(rows)


def block_slices(model: nn.Module, structure: Any) -> list[list[int]]:
    """Indices (into the flat parameter vector) of each block, computed here."""
    offsets, start = {}, 0
    for n, p in model.named_parameters():
        offsets[n] = list(range(start, start + p.numel()))
        start += p.numel()
    if structure == "full":
        return [list(range(start))]
    if structure == "parameter_wise":
        return list(offsets.values())
    if structure == "layer_wise":
        return [
            [i for n, _ in m.named_parameters() for i in offsets[f"{c}.{n}"]]
            for c, m in model.named_children()
            if list(m.parameters())
        ]
    return [[i for n in names for i in offsets[n]] for names in structure.values()]


def block_solve(
    c: torch.Tensor, blocks: list[list[int]], g_test: torch.Tensor, g_train: torch.Tensor, regs: Any
) -> torch.Tensor:
    """sum over blocks of g_test_b (C_bb + lam_b)^-1 g_train_b^T."""
    total = torch.zeros(g_test.shape[0], g_train.shape[0], dtype=torch.float64)
    for idx, lam in zip(blocks, regs, strict=True):
        cb = c[idx][:, idx] + lam * torch.eye(len(idx), dtype=torch.float64)
        total += g_test[:, idx] @ torch.linalg.solve(cb, g_train[:, idx].T)
    return total
