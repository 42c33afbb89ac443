"""The flush-to-zero helper thread of the per-layer backends (torch.layerwise.subnormal)."""

from __future__ import annotations

import platform
import threading
from typing import Any

import pytest
import torch
from torch import nn

from infl_array.torch.layerwise.subnormal import flush_subnormals, flushing


class Owner:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @flush_subnormals
    def where(self, x: torch.Tensor) -> dict[str, Any]:
        tiny = x * torch.tensor([1e-10], dtype=torch.float32)  # 1e-40: subnormal
        return {
            "thread": threading.current_thread().name,
            "ident": threading.get_ident(),
            "helper": threading.current_thread(),
            "grad": torch.is_grad_enabled(),
            "flushing": flushing(),
            "product": float(tiny[0]),
            "inner": self.inner(),
        }

    @flush_subnormals
    def inner(self) -> str:
        return threading.current_thread().name

    @flush_subnormals
    def fail(self) -> None:
        raise ValueError("from the helper")


def test_runs_in_a_flushing_helper_thread() -> None:
    owner = Owner(nn.Linear(2, 2))
    x = torch.tensor([1e-30], dtype=torch.float32)
    got = owner.where(x)
    assert got["thread"].startswith("infl-array-ftz") and got["inner"] == got["thread"]
    assert got["grad"] is True
    with torch.no_grad():
        assert owner.where(x)["grad"] is False  # the caller's grad mode goes along
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert got["flushing"] and got["product"] == 0.0
    # the caller's own thread is left as it was
    assert not flushing() and float(x * torch.tensor([1e-10])) != 0.0
    with pytest.raises(ValueError, match="from the helper"):
        owner.fail()
    # one helper per calling thread, reused
    idents = [owner.where(x)["ident"] for _ in range(2)]
    other: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: other.append(owner.where(x)))
    t.start()
    t.join()
    assert idents[0] == idents[1] == got["ident"] != threading.get_ident()
    assert other[0]["thread"].startswith("infl-array-ftz") and other[0]["ident"] != idents[0]
    # helpers are daemon threads (an interrupted program does not wait for them), and one
    # whose caller has ended stops
    assert got["helper"].daemon
    other[0]["helper"].join(timeout=10)
    assert not other[0]["helper"].is_alive() and got["helper"].is_alive()


def test_other_devices_run_where_called() -> None:
    owner = Owner(nn.Linear(2, 2, device="meta"))
    here = threading.current_thread().name
    assert owner.inner() == here
    assert Owner(nn.Sequential()).inner().startswith("infl-array-ftz")  # no parameters: CPU
